"""Helpers for tests against the real broker: a worker thread and a result collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

from worker.runtime.loop import Worker
from worker.runtime.security import client_security
from worker.runtime.service import start_worker
from worker.settings import Settings


@contextmanager
def worker_thread(settings: Settings) -> Iterator[Worker]:
    assert settings.bootstrap_servers
    worker, _, _ = start_worker(settings, settings.bootstrap_servers)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"


@dataclass
class Collected:
    findings: list[object] = field(default_factory=list)
    alerts: list[object] = field(default_factory=list)
    dead_letters: list[object] = field(default_factory=list)


def collect(
    settings: Settings, expected: int, timeout_s: float = 120.0, settle_s: float = 2.0
) -> Collected:
    """Read findings, alerts and dead letters from the start until ``expected`` findings + dead
    letters arrived, then keep reading ``settle_s`` longer so that duplicates would show."""
    assert settings.bootstrap_servers
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.max_message_bytes + (1 << 20),
        fetch_max_bytes=64 << 20,
        **client_security(settings),
    )
    topics = [settings.findings_topic, settings.alerts_topic, settings.dlq_topic]
    tps = [
        TopicPartition(t, p)
        for t in topics
        for p in sorted(consumer.partitions_for_topic(t) or {0})
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = Collected()
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                bucket = {
                    settings.findings_topic: out.findings,
                    settings.alerts_topic: out.alerts,
                    settings.dlq_topic: out.dead_letters,
                }[tp.topic]
                bucket.extend(records)
            if len(out.findings) + len(out.dead_letters) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return out
