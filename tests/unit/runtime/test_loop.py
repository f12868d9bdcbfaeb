"""The consumer loop against in-memory fakes: produce first, commit after, nothing lost.

These fakes stand in for Kafka only to test the loop's ordering rules; the same behaviour is
tested against the real broker in tests/integration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import OffsetAndMetadata, TopicPartition

from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.loop import Worker
from worker.settings import Settings


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    def __init__(self, log: list[str], error: Exception | None = None) -> None:
        self.log, self.error, self.sent = log, error, []  # type: list[str], Exception | None, list[tuple[str, Any]]

    def send(
        self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None
    ) -> FakeFuture:
        self.sent.append((topic, key, value, headers))
        self.log.append(f"send {topic}")
        return FakeFuture(self.error)

    def flush(self) -> None:
        self.log.append("flush")

    def close(self, timeout: float | None = None) -> None:
        self.log.append("producer close")


class FakeConsumer:
    def __init__(self, log: list[str], batches: list[list[Record]]) -> None:
        self.log, self.batches = log, batches
        self.committed_offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        self.tp = TopicPartition("scans.events", 0)
        self._position = 0

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.log.append("subscribe")

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        if not self.batches:
            return {}
        batch = self.batches.pop(0)
        self._position = batch[-1].offset + 1
        return {self.tp: batch}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.log.append("commit")
        self.committed_offsets.update(offsets)

    def commit_async(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any = None
    ) -> None:
        self.log.append("commit_async")
        self.committed_offsets.update(offsets)

    def highwater(self, tp: TopicPartition) -> int:
        return self._position

    def position(self, tp: TopicPartition) -> int:
        return self._position

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._position for tp in tps}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def committed(self, tp: TopicPartition) -> int | None:
        meta = self.committed_offsets.get(tp)
        return None if meta is None else meta.offset

    def close(self) -> None:
        self.log.append("consumer close")

    def pause(self, *tps: TopicPartition) -> None:
        self.log.append("pause")
        self._paused = set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.log.append("resume")
        self._paused = set()

    def paused(self) -> set[TopicPartition]:
        return getattr(self, "_paused", set())


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


def record(offset: int, value: bytes) -> Record:
    return Record(
        "scans.events",
        0,
        offset,
        1_700_000_000_000,
        b"study",
        value,
        [("content-type", b"application/dicom"), ("event-id", f"e{offset}".encode())],
    )


def make_worker(
    models: ModelSet,
    batches: list[list[Record]],
    error: Exception | None = None,
    settings: Settings | None = None,
) -> tuple[Worker, FakeConsumer, FakeProducer, list[str]]:
    log: list[str] = []
    consumer, producer = FakeConsumer(log, batches), FakeProducer(log, error)
    worker = Worker(
        settings or Settings(),
        "fake:9092",
        models,
        Metrics(),
        Health(),
        consumer=consumer,
        producer=producer,
    )
    return worker, consumer, producer, log


def test_every_event_ends_in_one_result_and_offsets_commit_after_the_sends(
    models: ModelSet,
) -> None:
    good = encode_ct(ct_slice(1, 64))
    batch = [record(0, good), record(1, b"not dicom at all"), record(2, good[:300])]
    worker, consumer, producer, log = make_worker(models, [batch])
    stats = worker.run(drain=True)
    topics = [topic for topic, *_ in producer.sent]
    assert topics.count("scans.findings") == 1 and topics.count("scans.dlq") == 2
    assert (stats.consumed, stats.findings, stats.dead_letters) == (3, 1, 2)
    assert stats.by_reason == {"not_dicom": 1, "truncated": 1}
    dead = [(v, dict(h)) for t, _, v, h in producer.sent if t == "scans.dlq"]
    assert dead[0][0] == b"not dicom at all" and dead[0][1]["event-id"] == b"e1"
    assert consumer.committed_offsets[consumer.tp].offset == 3
    # Asynchronous commits while running, confirmed by a synchronous one before leaving.
    assert log.index("commit_async") < log.index("commit") < log.index("consumer close")
    # Offsets are committed only after every send was flushed (acknowledged).
    assert (
        log.index("commit_async")
        > log.index("flush")
        > max(i for i, entry in enumerate(log) if entry.startswith("send"))
    )
    finding = json.loads(next(v for t, _, v, _ in producer.sent if t == "scans.findings"))
    assert finding["event_id"] == "e0" and finding["source"]["offset"] == 0


def test_a_refused_send_is_replayed_and_only_then_committed(models: ModelSet) -> None:
    worker, consumer, producer, log = make_worker(
        models, [[record(0, encode_ct(ct_slice(2, 64)))]], error=RuntimeError("broker said no")
    )
    consumer.seek = lambda tp, offset: log.append(f"seek {offset}")  # type: ignore[attr-defined]
    original_poll = consumer.poll

    def poll(timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        if "seek 0" in log and not consumer.batches and producer.error is not None:
            producer.error = None  # the broker is back
            consumer.batches.append([record(0, encode_ct(ct_slice(2, 64)))])
        return original_poll(timeout_ms, max_records)

    consumer.poll = poll  # type: ignore[method-assign]
    stats = worker.run(drain=True)
    assert log.index("seek 0") < log.index("commit_async"), log
    assert log.count("commit_async") == 1 and consumer.committed_offsets[consumer.tp].offset == 1
    # The failed attempt is not counted: one finding, though it was sent twice.
    assert stats.findings == 1
    assert [t for t, *_ in producer.sent].count("scans.findings") == 2


def test_internal_errors_become_dead_letters(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.runtime.loop as loop

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("bug in a stage")

    monkeypatch.setattr(loop, "prepare", boom)
    worker, consumer, producer, _ = make_worker(models, [[record(0, encode_ct(ct_slice(3, 64)))]])
    stats = worker.run(drain=True)
    assert stats.by_reason == {"internal_error": 1}
    headers = dict(producer.sent[0][3])
    assert headers["scanstream.error.reason"] == b"internal_error"
    assert b"ZeroDivisionError" in headers["scanstream.error.detail"]
    assert consumer.committed_offsets[consumer.tp].offset == 1


def test_a_slow_batch_pauses_partitions_and_keeps_polling(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import worker.runtime.loop as loop

    real_prepare = loop.prepare

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.6)  # a slow model: longer than the patience before pausing
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(loop, "prepare", slow_prepare)
    # A 1.2 s poll interval: the loop pauses after waiting a quarter of it (0.3 s).
    settings = Settings(max_poll_interval_ms=1200)
    worker, consumer, _, log = make_worker(
        models, [[record(0, encode_ct(ct_slice(4, 64)))]], settings=settings
    )
    polls_while_paused = []
    original_poll = consumer.poll

    def poll(timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        if consumer.paused():
            polls_while_paused.append(timeout_ms)
            return {}  # a paused consumer returns nothing
        return original_poll(timeout_ms, max_records)

    consumer.poll = poll  # type: ignore[method-assign]
    stats = worker.run(drain=True)
    assert stats.findings == 1
    assert len(polls_while_paused) >= 3  # the member kept polling (stays in the group)
    assert log.index("pause") < log.index("resume") < log.index("commit_async")
