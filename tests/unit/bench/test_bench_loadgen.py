"""The load generator without a broker: partitions it waits for, the librdkafka configuration of
each security setting, the answers it parses, a failed delivery and an unknown generator.
(tests/integration/test_bench_loadgen_broker.py runs both generators against real brokers.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.bench import BenchError
from worker.bench.loadgen import (
    GENERATORS,
    FindingReader,
    LibrdkafkaPublisher,
    describe,
    known_partitions,
    librdkafka_security,
    open_clients,
)
from worker.settings import Secret, Settings


def test_a_topic_whose_partitions_stay_unknown_fails_the_phase_by_name() -> None:
    # Never partition 0 alone as a guess: the findings that went elsewhere would be missed.
    with pytest.raises(
        BenchError, match=r"the topic t\.findings has no partitions known after 0 s"
    ):
        known_partitions(lambda topic: set(), "t.findings", timeout_s=0.2)


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


class _Reader(FindingReader):
    """The shared part of a reader, fed by hand: no thread, no client."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, [(settings.findings_topic, 0), (settings.dlq_topic, 0)])


def test_a_finding_and_a_dead_letter_are_parsed_alike_for_both_clients() -> None:
    settings = Settings()
    reader = _Reader(settings)
    doc = {
        "event_id": "e1",
        "frame_count": 2,
        "worker_id": "w",
        "latency_ms": 12.5,
        "timings_ms": {"decode": 1.5, "edges": 2.0},
    }
    found = reader._parse(settings.findings_topic, json.dumps(doc).encode(), [], 100.0)
    assert found is not None
    event_id, arrival = found
    assert (event_id, arrival.arrived, arrival.frames, arrival.worker_id) == ("e1", 100.0, 2, "w")
    assert (arrival.worker_latency_ms, arrival.compute_ms, arrival.dead) == (12.5, 3.5, False)
    dead = reader._parse(settings.dlq_topic, None, [("event-id", b"e2")], 101.0)
    assert dead is not None and dead[0] == "e2" and dead[1].dead
    # A dead letter without an event id (a record that never was a bench event) is no answer.
    assert reader._parse(settings.dlq_topic, b"x", [("event-id", None)], 101.0) is None


def test_a_missing_answer_names_the_partitions_read() -> None:
    reader = _Reader(Settings(findings_topic="f", dlq_topic="d"))
    with pytest.raises(BenchError, match=r"1/1 events unanswered .* reads f\[0\], d\[0\]"):
        reader.wait_for(["e1"], timeout_s=0.05)


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
    from worker.bench.loadgen import Event

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


def test_an_unknown_generator_is_refused_by_name() -> None:
    with pytest.raises(BenchError, match=r"unknown load generator 'rdkafka': use librdkafka or"):
        open_clients("rdkafka", "localhost:1", Settings())
    assert GENERATORS == ("librdkafka", "kafka-python")


def test_each_generator_names_its_client_and_version() -> None:
    import confluent_kafka
    import kafka

    lib = confluent_kafka.libversion()[0]
    assert (
        describe("librdkafka")
        == f"librdkafka {lib} (confluent-kafka {confluent_kafka.__version__})"
    )
    assert describe("kafka-python") == f"kafka-python {kafka.__version__}"
