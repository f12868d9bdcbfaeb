"""The librdkafka load generator without a broker: the configuration of each security setting,
and a failed delivery. (tests/integration/test_bench_loadgen_broker.py and
test_secure_broker.py run it against real brokers.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.bench import BenchError
from worker.bench.librdkafka import LibrdkafkaPublisher, librdkafka_security
from worker.bench.loadgen import Event
from worker.settings import Secret, Settings


def _files(tmp_path: Path, *names: str) -> list[str]:
    paths = [tmp_path / name for name in names]
    for path in paths:
        path.write_text("-----BEGIN-----\n")  # Settings checks that they are readable files
    return [str(p) for p in paths]


def test_tls_maps_the_ca_the_client_certificate_and_hostname_checking(tmp_path: Path) -> None:
    ca, cert, key = _files(tmp_path, "ca.pem", "me.pem", "me.key")
    settings = Settings(security_protocol="SSL", ssl_cafile=ca, ssl_certfile=cert, ssl_keyfile=key)
    assert librdkafka_security(settings) == {
        "security.protocol": "SSL",
        "ssl.ca.location": ca,
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.certificate.location": cert,
        "ssl.key.location": key,
    }
    off = librdkafka_security(Settings(security_protocol="SSL", ssl_check_hostname=False))
    assert off["ssl.endpoint.identification.algorithm"] == "none"
    assert off["ssl.ca.location"] == "probe"  # the system's CAs, as kafka-python's default
    assert "ssl.certificate.location" not in off


def test_sasl_scram_and_oauthbearer_send_the_configured_secret(tmp_path: Path) -> None:
    (ca,) = _files(tmp_path, "ca.pem")
    scram = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="scanstream",
        sasl_password=Secret("s3cret"),
        ssl_cafile=ca,
    )
    conf = librdkafka_security(scram)
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("scanstream", "s3cret")
    assert conf["ssl.ca.location"] == ca
    bearer = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        sasl_password=Secret("token-1"),
    )
    conf = librdkafka_security(bearer)
    assert "sasl.password" not in conf and "ssl.ca.location" not in conf
    token, expires = conf["oauth_cb"]("")
    assert token == "token-1" and expires > 0


class _Producer:
    """A librdkafka producer whose deliveries fail, or are never acknowledged."""

    def __init__(self, error: str | None, unacknowledged: int = 0) -> None:
        self.error, self.unacknowledged = error, unacknowledged
        self.reports: list[Any] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.reports.append(kwargs["on_delivery"])

    def poll(self, timeout: float) -> int:
        served, self.reports = self.reports, []
        for report in served:
            report(self.error, None)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return self.unacknowledged


def _publisher(producer: _Producer) -> LibrdkafkaPublisher:
    pub = LibrdkafkaPublisher.__new__(LibrdkafkaPublisher)
    pub.settings, pub.partitions, pub._next, pub._failed = Settings(), [0, 1], 0, []
    pub._producer = producer
    return pub


def test_a_failed_delivery_fails_the_flush_instead_of_a_silent_wait() -> None:
    event = Event("e", b"data", None, 1)
    ok = _publisher(_Producer(None))
    ok.send(event)
    ok.flush()  # every delivery acknowledged: no error
    bad = _publisher(_Producer("KafkaError{code=MSG_SIZE_TOO_LARGE}"))
    bad.send(event)
    with pytest.raises(BenchError, match=r"could not deliver 1 event\(s\): .*MSG_SIZE_TOO_LARGE"):
        bad.flush()
    late = _publisher(_Producer(None, unacknowledged=2))
    with pytest.raises(BenchError, match=r"could not deliver 2 event\(s\): not acknowledged"):
        late.flush()
