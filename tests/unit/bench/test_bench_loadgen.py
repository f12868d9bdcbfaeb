"""The load generator without a broker: partitions it waits for, the answers it parses, an
unknown generator, the clients it names.
(tests/integration/test_bench_loadgen_broker.py runs both generators against real brokers.)"""

from __future__ import annotations

import json

import pytest

from worker.bench import BenchError
from worker.bench.loadgen import (
    GENERATORS,
    FindingReader,
    describe,
    known_partitions,
    open_clients,
)
from worker.settings import Settings


def test_a_topic_whose_partitions_stay_unknown_fails_the_phase_by_name() -> None:
    # Never partition 0 alone as a guess: the findings that went elsewhere would be missed.
    with pytest.raises(
        BenchError, match=r"the topic t\.findings has no partitions known after 0 s"
    ):
        known_partitions(lambda topic: set(), "t.findings", timeout_s=0.2)


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
