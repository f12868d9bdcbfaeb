"""Against the local broker started with ``scanstream broker start --secure`` (SASL_SSL, SCRAM,
StandardAuthorizer): the worker, publisher and demo work over it with only their documented ACLs;
a wrong password, an untrusted CA and a plaintext client each fail start within seconds, naming
the setting to fix; removing any documented ACL fails start naming the missing grant."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
    ResourceType,
    UserScramCredentialUpsertion,
)

from tests.gateway_helpers import gateway_process
from tests.kafka_helpers import at_least, collect, read_topics, worker_thread
from worker import broker
from worker.bench.loadgen import Event, open_clients
from worker.broker import free_port
from worker.broker_secure import SecureSetup
from worker.contract import header
from worker.errors import BrokerError
from worker.inference import ModelSet
from worker.runtime import acls
from worker.runtime import kafka as kafka_clients
from worker.runtime.service import start_worker
from worker.settings import Settings

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")

GOOD = ["CT_small.dcm", "MR_small.dcm"]


@dataclass
class SecureBroker:
    bootstrap: str
    setup: SecureSetup
    client_env: dict[str, str]  # as printed by `broker start --secure`
    admin: Settings

    def user(self, name: str) -> dict[str, str]:
        """A new SCRAM user (made through the admin API), as client environment."""
        password = secrets.token_hex(12)
        admin = kafka_clients.admin_client(self.bootstrap, self.admin)
        try:
            upsert = UserScramCredentialUpsertion(name, "SCRAM-SHA-512", password)
            assert admin.alter_user_scram_credentials([upsert]) == {name: None}
        finally:
            admin.close()
        env = {**self.client_env, "SCANSTREAM_SASL_USERNAME": name}
        return {**env, "SCANSTREAM_SASL_PASSWORD": password}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCANSTREAM_", "KAFKA_"))}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    state = tmp_path_factory.mktemp("secure-broker")
    env = {**_clean_env(), "SCANSTREAM_BROKER_DIR": str(state)}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "broker", "start", "--secure"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        printed = dict(
            line.removeprefix("export ").split("=", 1)
            for line in proc.stdout.splitlines()
            if line.startswith("export ")
        )
        info = broker.status(state)
        assert info is not None and info.secure
        setup = broker.secure_setup(info)
        assert setup is not None
        admin = Settings.from_env(setup.client_env(info.bootstrap, admin=True))
        yield SecureBroker(info.bootstrap, setup, printed, admin)
    finally:
        broker.stop(state_dir=state)


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


def _namespace(secure: SecureBroker) -> str:
    ns = f"sec{uuid.uuid4().hex[:8]}"
    kafka_clients.ensure_topics(secure.bootstrap, secure.admin.namespaced(ns))
    return ns


def _everything(principal: str) -> ACLFilter:
    every = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    return ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ANY, every)


def _acls_of(secure: SecureBroker, principal: str) -> set[tuple[str, str, str, str]]:
    admin = kafka_clients.admin_client(secure.bootstrap, secure.admin)
    try:
        found, error = admin.describe_acls(_everything(principal))
    finally:
        admin.close()
    assert error.errno == 0, error
    return {
        (
            a.resource_pattern.resource_type.name,
            a.resource_pattern.resource_name,
            a.resource_pattern.pattern_type.name,
            a.operation.name,
        )
        for a in found
    }


def _expected(grants: list[acls.Grant]) -> set[tuple[str, str, str, str]]:
    kinds = {"transactional-id": "TRANSACTIONAL_ID"}
    return {
        (
            kinds.get(g.resource, g.resource.upper()),
            g.name,
            "PREFIXED" if g.prefixed else "LITERAL",
            g.operation.upper(),
        )
        for g in grants
    }


def _set_acls(secure: SecureBroker, principal: str, grants: list[acls.Grant]) -> None:
    """Make ``principal``'s ACLs exactly ``grants``, and wait until the broker serves them."""
    admin = kafka_clients.admin_client(secure.bootstrap, secure.admin)
    try:
        admin.delete_acls([_everything(principal)])
        if grants:
            acls.grant(admin, principal, grants)
    finally:
        admin.close()
    deadline = time.monotonic() + 15
    while _acls_of(secure, principal) != _expected(grants):
        assert time.monotonic() < deadline, (_acls_of(secure, principal), _expected(grants))
        time.sleep(0.2)


def _worker_settings(env: dict[str, str], ns: str, **changes: Any) -> Settings:
    settings = Settings.from_env(env, create_topics=False, worker_id=f"w-{ns}", **changes)
    return settings.namespaced(ns)


def test_worker_and_publisher_work_over_sasl_ssl_with_only_their_documented_acls(
    secure: SecureBroker, pydicom_files: Path
) -> None:
    ns = _namespace(secure)
    worker_env, publisher_env = secure.user(f"worker-{ns}"), secure.user(f"publisher-{ns}")
    settings = _worker_settings(worker_env, ns)
    publisher = Settings.from_env(publisher_env, create_topics=False).namespaced(ns)
    _set_acls(secure, f"User:worker-{ns}", acls.worker_grants(settings))
    _set_acls(secure, f"User:publisher-{ns}", acls.publisher_grants(publisher))
    assert _acls_of(secure, f"User:worker-{ns}") == {
        ("TOPIC", f"{ns}.events", "LITERAL", "READ"),
        ("GROUP", ns, "LITERAL", "READ"),
        ("TOPIC", f"{ns}.findings", "LITERAL", "WRITE"),
        ("TOPIC", f"{ns}.alerts", "LITERAL", "WRITE"),
        ("TOPIC", f"{ns}.dlq", "LITERAL", "WRITE"),
    }
    assert _acls_of(secure, f"User:publisher-{ns}") == {
        ("TOPIC", f"{ns}.events", "LITERAL", "WRITE")
    }
    with worker_thread(settings.replace(bootstrap_servers=secure.bootstrap)):
        # The real command, as the publisher principal with Write on the events topic alone: it
        # checks only the topic it writes (it may not Describe the worker's outputs).
        env = {**publisher_env, "SCANSTREAM_EVENTS_TOPIC": publisher.events_topic}
        code, out, _ = _run_cli(
            {**env, "SCANSTREAM_CREATE_TOPICS": "false"},
            "publish",
            *(str(pydicom_files / n) for n in GOOD),
        )
        assert code == 0, out
        assert f"published 2 event(s) to {publisher.events_topic}" in out
        got = collect(secure.admin.namespaced(ns).replace(bootstrap_servers=secure.bootstrap), 2)
    assert len(got.findings) == 2 and got.dead_letters == []


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_removing_any_documented_acl_fails_start_naming_it(
    secure: SecureBroker, models: ModelSet, delivery: str
) -> None:
    ns = _namespace(secure)
    principal = f"User:worker-{ns}"
    env = secure.user(f"worker-{ns}")
    settings = _worker_settings(env, ns, delivery=delivery)
    grants = acls.worker_grants(settings)
    assert len(grants) == (6 if delivery == "exactly-once" else 5)
    for missing in grants:
        _set_acls(secure, principal, [g for g in grants if g != missing])
        with pytest.raises(BrokerError) as caught:
            start_worker(settings, secure.bootstrap, models)
        message = str(caught.value)
        assert f"{missing.operation} on" in message and missing.name in message, message
    # And with all of them, the worker starts.
    _set_acls(secure, principal, grants)
    worker, _, _ = start_worker(settings, secure.bootstrap, models)
    worker.close()


def _run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def test_misconfigured_clients_fail_start_within_seconds_naming_the_setting(
    secure: SecureBroker, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    plaintext = {"KAFKA_BOOTSTRAP_SERVERS": secure.bootstrap}
    cases = {
        "SCANSTREAM_SASL_PASSWORD": {**secure.client_env, "SCANSTREAM_SASL_PASSWORD": "wrong"},
        "SCANSTREAM_SSL_CAFILE": {**secure.client_env, "SCANSTREAM_SSL_CAFILE": str(other_ca)},
        "SCANSTREAM_SECURITY_PROTOCOL": plaintext,
    }
    # A long connect timeout, so that failing at half of it still means "the cause was found"
    # (a refused login counts after one 5 s bootstrap slice, plus interpreter start and
    # imports), not "the connect timeout ran out".
    connect_timeout_s = 60
    for setting, env in cases.items():
        env = {**env, "SCANSTREAM_CONNECT_TIMEOUT_S": str(connect_timeout_s)}
        code, output, took = _run_cli(env, "run", "--drain")
        assert code == 2, output
        assert setting in output and "Traceback" not in output, output
        assert took < connect_timeout_s / 2, f"{setting}: start failed only after {took:.1f} s"
        print(f"{setting}: failed in {took:.1f} s")


def test_a_plaintext_client_is_refused(secure: SecureBroker) -> None:
    """A second client (librdkafka) without TLS gets nothing delivered."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": secure.bootstrap, "message.timeout.ms": 4000, "log_level": 0}
    )
    errors: list[object] = []
    producer.produce("scans.events", b"x", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert len(errors) == 1 and errors[0] is not None
    # The same client with the printed settings is let in.
    env = secure.client_env
    good = confluent_kafka.Producer(
        {
            "bootstrap.servers": secure.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": env["SCANSTREAM_SASL_MECHANISM"],
            "sasl.username": env["SCANSTREAM_SASL_USERNAME"],
            "sasl.password": env["SCANSTREAM_SASL_PASSWORD"],
            "ssl.ca.location": env["SCANSTREAM_SSL_CAFILE"],
            "message.timeout.ms": 20000,
        }
    )
    metadata = good.list_topics(timeout=20)
    assert "scans.events" in metadata.topics


def test_publish_and_demo_work_over_sasl_ssl(secure: SecureBroker, pydicom_files: Path) -> None:
    code, output, _ = _run_cli(secure.client_env, "publish", str(pydicom_files / "CT_small.dcm"))
    assert code == 0 and "published 1 event" in output, output
    code, output, _ = _run_cli(secure.client_env, "demo", timeout=300)
    assert code == 0, output
    # The demo's C-STORE leg ran too: the gateway publishes over SASL_SSL with its ACLs.
    assert "skipped" not in output and output.count("-> Success") == 2, output


def test_the_gateway_works_over_sasl_ssl_with_only_its_documented_acls(
    secure: SecureBroker, pydicom_files: Path, tmp_path: Path
) -> None:
    """The real `scanstream gateway`, as a principal with Write on the events and studies topics
    alone and SCANSTREAM_CREATE_TOPICS=false: it starts (it checks only the topics it writes),
    and an instance a real storescu sends becomes an event."""
    storescu = shutil.which("storescu")
    if storescu is None:
        if os.environ.get("CI"):
            pytest.fail("dcmtk's storescu is missing under CI (.ci/run installs it)")
        pytest.skip("dcmtk's storescu is not installed (CI installs it)")
    ns = _namespace(secure)
    admin = secure.admin.namespaced(ns).replace(bootstrap_servers=secure.bootstrap)
    kafka_clients.ensure_topics(secure.bootstrap, admin, only=(admin.studies_topic,))
    env = secure.user(f"gateway-{ns}")
    gateway = Settings.from_env(env, create_topics=False).namespaced(ns)
    _set_acls(secure, f"User:gateway-{ns}", acls.gateway_grants(gateway))
    assert _acls_of(secure, f"User:gateway-{ns}") == {
        ("TOPIC", f"{ns}.events", "LITERAL", "WRITE"),
        ("TOPIC", f"{ns}.studies", "LITERAL", "WRITE"),
    }
    port, log = free_port(), tmp_path / "gateway.log"
    login = {**env, "SCANSTREAM_CREATE_TOPICS": "false"}
    with gateway_process(gateway, port, log, login):
        sent = subprocess.run(
            [
                storescu,
                "-aec",
                "SCANSTREAM",
                "127.0.0.1",
                str(port),
                str(pydicom_files / "CT_small.dcm"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        events = read_topics(admin, [admin.events_topic], at_least({admin.events_topic: 1}))
        assert len(events[admin.events_topic]) == 1


def test_the_bench_load_generator_works_over_sasl_ssl(secure: SecureBroker) -> None:
    """The benchmark's librdkafka publisher and reader, configured from the same settings as
    the worker (worker.bench.librdkafka.librdkafka_security): SCRAM over TLS with the broker's
    CA."""
    ns = _namespace(secure)
    admin = secure.admin.namespaced(ns).replace(bootstrap_servers=secure.bootstrap)
    assert admin.security_protocol == "SASL_SSL" and admin.ssl_cafile
    pub, reader = open_clients("librdkafka", secure.bootstrap, admin)
    try:
        event = Event("slice", b"bytes", b"study", 1)
        ids = [pub.send(event)[0] for _ in range(3)]
        pub.flush()  # raises unless every event was acknowledged
        events = read_topics(admin, [admin.events_topic], at_least({admin.events_topic: 3}), 60)
        assert sorted(header(r.headers, "event-id") for r in events[admin.events_topic]) == sorted(
            i.encode() for i in ids
        )
        producer = kafka_clients.producer(secure.bootstrap, admin)
        try:
            doc = {"event_id": ids[0], "frame_count": 1, "worker_id": "w", "latency_ms": 1.0}
            producer.send(admin.findings_topic, json.dumps({**doc, "timings_ms": {}}).encode())
            producer.flush(timeout=30)
        finally:
            producer.close()
        assert reader.wait_for([ids[0]], timeout_s=60)[ids[0]].worker_id == "w"
    finally:
        pub.close()
        reader.close()
