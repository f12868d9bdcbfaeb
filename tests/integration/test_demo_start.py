"""The demo's fresh group starts at the end of the events topic without ever skipping: its start
is committed before any member joins, so a rebalance before the first commit replays.

The second Kafka client (confluent-kafka) reads the committed offsets, so the check does not
share kafka-python's view of the group."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from worker.demo import start_group_at_end
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")


def _publish(settings: Settings, n: int) -> None:
    assert settings.bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for i in range(n):
        producer.send(settings.events_topic, key=str(i).encode(), value=b"x")
    producer.flush()
    producer.close()


def _values_until(consumer: KafkaConsumer, n: int, timeout_s: float = 60.0) -> list[Any]:
    """Poll until ``n`` records came (or the time is up), then 1 s more for any extra."""
    got: list[Any] = []
    deadline, settle_until = time.monotonic() + timeout_s, None
    while time.monotonic() < (settle_until or deadline):
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
        if len(got) >= n and settle_until is None:
            settle_until = time.monotonic() + 1.0
    return got


def _joined(consumer: KafkaConsumer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got its partitions"
        consumer.poll(timeout_ms=200)


def test_the_start_is_committed_at_the_end_for_the_group(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(group_id=f"demo-{uuid.uuid4().hex[:8]}")
    _publish(settings, 5)  # backlog the demo must not see
    ends = start_group_at_end(settings.bootstrap_servers or "", settings)
    assert sum(ends.values()) == 5 and len(ends) >= 1

    reader = confluent_kafka.Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id}
    )
    try:
        asked = [confluent_kafka.TopicPartition(tp.topic, tp.partition) for tp in ends]
        committed = reader.committed(asked, timeout=30)
    finally:
        reader.close()
    assert {(c.topic, c.partition): c.offset for c in committed} == {
        (tp.topic, tp.partition): end for tp, end in ends.items()
    }


def test_a_rebalance_before_the_first_commit_replays_instead_of_skipping(
    isolated_settings: Settings,
) -> None:
    """The race the demo lost to: a member fetches events and is replaced (a rebalance) before
    it commits. Its successor, even told to start at the latest offset, reads them again."""
    settings = isolated_settings.replace(group_id=f"demo-{uuid.uuid4().hex[:8]}")
    bootstrap = settings.bootstrap_servers or ""
    _publish(settings, 3)  # backlog
    start_group_at_end(bootstrap, settings)

    first = kafka_clients.consumer(
        bootstrap, settings, [settings.events_topic], auto_offset_reset="latest"
    )
    try:
        _joined(first)
        _publish(settings, 4)
        assert len(_values_until(first, 4)) == 4
    finally:
        first.close(autocommit=False)  # leaves without committing

    second = kafka_clients.consumer(
        bootstrap, settings, [settings.events_topic], auto_offset_reset="latest"
    )
    try:
        again = _values_until(second, 4)
    finally:
        second.close(autocommit=False)
    assert len(again) == 4  # replayed from the committed start; never the backlog's 3
