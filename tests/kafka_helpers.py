"""Helpers for tests against the real broker: a worker thread and a result collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from kafka import KafkaConsumer, TopicPartition

from worker.runtime.loop import Worker
from worker.runtime.membership import member_state
from worker.runtime.security import client_security
from worker.runtime.service import start_worker
from worker.settings import Settings


class Loop(Protocol):
    """A consumer loop: the worker, the exporter, the summarizer."""

    def run(self) -> object: ...

    def stop(self) -> None: ...


L = TypeVar("L", bound=Loop)


@contextmanager
def running(loop: L, name: str) -> Iterator[L]:
    """``loop.run()`` on a thread for the block; stopped and joined at the end."""
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), f"the {name} did not stop"


@contextmanager
def worker_thread(settings: Settings) -> Iterator[Worker]:
    assert settings.bootstrap_servers
    worker, _, _ = start_worker(settings, settings.bootstrap_servers)
    with running(worker, "worker"):
        yield worker


@dataclass
class Collected:
    findings: list[object] = field(default_factory=list)
    alerts: list[object] = field(default_factory=list)
    dead_letters: list[object] = field(default_factory=list)


def read_topics(
    settings: Settings,
    topics: Sequence[str],
    until: Callable[[dict[str, list[Any]]], bool],
    timeout_s: float = 120.0,
    settle_s: float = 2.0,
) -> dict[str, list[Any]]:
    """Every committed record of ``topics`` from the start, until ``until(records by topic)``
    holds, then ``settle_s`` longer so that duplicates would show (or ``timeout_s`` passes)."""
    assert settings.bootstrap_servers
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.max_message_bytes + (1 << 20),
        fetch_max_bytes=64 << 20,
        **client_security(settings),
    )
    out: dict[str, list[Any]] = {topic: [] for topic in topics}
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or {0})
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline, settle_until = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                out[tp.topic].extend(records)
            if until(out):
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return out


def at_least(want: dict[str, int]) -> Callable[[dict[str, list[Any]]], bool]:
    """An ``until`` for :func:`read_topics`: each topic has at least its number of records."""
    return lambda out: all(len(out[t]) >= n for t, n in want.items())


def collect(
    settings: Settings, expected: int, timeout_s: float = 120.0, settle_s: float = 2.0
) -> Collected:
    """Read findings, alerts and dead letters from the start until ``expected`` findings + dead
    letters arrived, then keep reading ``settle_s`` longer so that duplicates would show."""
    found, alerts, dlq = settings.findings_topic, settings.alerts_topic, settings.dlq_topic
    out = read_topics(
        settings,
        [found, alerts, dlq],
        lambda got: len(got[found]) + len(got[dlq]) >= expected,
        timeout_s,
        settle_s,
    )
    return Collected(out[found], out[alerts], out[dlq])


def poll_until_assigned(consumer: Any, want: int, timeout_ms: int, seconds: float) -> set[int]:
    """Poll with ``timeout_ms`` waits until ``consumer`` holds ``want`` partitions and its
    membership is stable (or ``seconds`` pass); the partitions it holds then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=timeout_ms)
        held = {tp.partition for tp in consumer.assignment()}
        if len(held) == want and member_state(consumer) == "<stable>":
            return held
    return {tp.partition for tp in consumer.assignment()}
