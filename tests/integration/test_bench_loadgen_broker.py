"""The benchmark's load generators against the real broker, each checked by the other client:
the events one publishes are read back by the other, key, value, headers and partitions intact,
and the answers the other writes (a finding, a dead letter) reach the reader with their figures.
(Over SASL_SSL: tests/integration/test_secure_broker.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kafka_helpers import at_least, read_topics

from worker.bench.loadgen import GENERATORS, Event, open_clients
from worker.contract import header
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")

EVENT = Event("slice", b"\x00DICM-like bytes", b"study-1", 1, "application/dicom")


def finding(event_id: str) -> bytes:
    doc = {
        "event_id": event_id,
        "frame_count": 3,
        "worker_id": "w-1",
        "latency_ms": 12.5,
        "timings_ms": {"decode": 1.25, "edges": 2.0},
    }
    return json.dumps(doc).encode()


def _events_read_by(client: str, settings: Settings, count: int) -> list[dict[str, Any]]:
    """The events topic from the start, as ``client`` reads it (key, value, headers, partition)."""
    topic = settings.events_topic
    if client == "kafka-python":
        got = read_topics(settings, [topic], at_least({topic: count}), 60, settle_s=1.0)[topic]
        return [
            {"key": r.key, "value": r.value, "headers": r.headers, "partition": r.partition}
            for r in got
        ]
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": "check", "log_level": 0}
    )
    try:
        parts = consumer.list_topics(topic, timeout=20).topics[topic].partitions
        begin = confluent_kafka.OFFSET_BEGINNING
        consumer.assign([confluent_kafka.TopicPartition(topic, p, begin) for p in parts])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            r = consumer.poll(0.5)
            if r is not None and r.error() is None:
                headers, partition = r.headers(), r.partition()
                out.append({"key": r.key(), "value": r.value(), "headers": headers,
                            "partition": partition})  # fmt: skip
        return out
    finally:
        consumer.close()


def _answers_written_by(client: str, settings: Settings) -> None:
    """A finding for "f1" and a dead letter for "d1", written by ``client``."""
    dead_headers = [("event-id", b"d1"), ("reason", b"decode_error")]
    if client == "kafka-python":
        producer = kafka_clients.producer(str(settings.bootstrap_servers), settings)
        try:
            producer.send(settings.findings_topic, finding("f1"), partition=1)
            producer.send(settings.dlq_topic, b"original", headers=dead_headers, partition=2)
            producer.flush(timeout=30)
        finally:
            producer.close()
        return
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.findings_topic, finding("f1"), partition=1)
    producer.produce(settings.dlq_topic, b"original", headers=dead_headers, partition=2)
    assert producer.flush(30) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("generator", GENERATORS)
def test_a_generator_s_events_and_the_answers_it_reads_agree_with_the_other_client(
    generator: str, isolated_settings: Settings
) -> None:
    settings = isolated_settings
    other = GENERATORS[1 - GENERATORS.index(generator)]
    pub, reader = open_clients(generator, str(settings.bootstrap_servers), settings)
    try:
        assert pub.partitions == [0, 1, 2]
        sent = [pub.send(EVENT, partition=p) for p in pub.partitions]
        sent += [pub.send(EVENT) for _ in range(4)]  # round-robin: 0, 1, 2, 0
        pub.flush()
        records = _events_read_by(other, settings, len(sent))
        assert len(records) == len(sent)
        by_id = {header(r["headers"], "event-id"): r for r in records}
        assert set(by_id) == {event_id.encode() for event_id, _ in sent}
        assert sorted(r["partition"] for r in records) == [0, 0, 0, 1, 1, 2, 2]
        for r in records:
            assert (r["key"], r["value"]) == (EVENT.key, EVENT.data)
            assert header(r["headers"], "content-type") == b"application/dicom"
            assert header(r["headers"], "sent-at") is not None

        written_at = time.time()
        _answers_written_by(other, settings)
        arrivals = reader.wait_for(["f1", "d1"], timeout_s=60)
        found, dead = arrivals["f1"], arrivals["d1"]
        assert (found.frames, found.worker_id, found.worker_latency_ms) == (3, "w-1", 12.5)
        assert (found.compute_ms, found.dead) == (3.25, False)
        assert dead.dead and found.arrived >= written_at and dead.arrived >= written_at
        assert reader.reads == (
            f"{settings.findings_topic}[0], {settings.findings_topic}[1], "
            f"{settings.findings_topic}[2], {settings.dlq_topic}[0], "
            f"{settings.dlq_topic}[1], {settings.dlq_topic}[2]"
        )
    finally:
        pub.close()
        reader.close()
