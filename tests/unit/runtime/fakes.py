"""In-memory stand-ins for kafka-python's consumer and producer, for the loop's unit tests.

They enforce kafka-python 3's own argument rules where the loop could break them: ``send()``
refuses a record with neither key nor value (ValueError) and header items that are not
``(str, bytes)`` tuples (TypeError), and it runs the configured value serializer with the header
list, as kafka-python does, so what the fakes record is what would go on the wire (nulls
included). Failures are injected per send and per commit. The same behaviour is tested against
the real broker in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import OffsetAndMetadata, TopicPartition

from worker.runtime.kafka import NullableSerializer
from worker.settings import Settings

TOPIC = "scans.events"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


class FakeFuture:
    """kafka-python's FutureRecordMetadata, as far as the delivery uses it."""

    def __init__(self, error: BaseException | None) -> None:
        self.exception = error
        self.is_done = True

    def failed(self) -> bool:
        return self.exception is not None

    def get(self, timeout: float | None = None) -> None:
        if self.exception is not None:
            raise self.exception


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    acked: bool


class FakeProducer:
    """``fail(topic, value, attempt)`` returns the error for one send, or None to accept it."""

    def __init__(
        self,
        log: list[str],
        fail: Callable[[str, Any, int], BaseException | None] = lambda *_: None,
    ) -> None:
        self.log, self.fail = log, fail
        self.sent: list[Sent] = []
        self._serializer = NullableSerializer()

    def send(
        self, topic: str, value: Any = None, key: bytes | None = None, headers: Any = None
    ) -> FakeFuture:
        if value is None and key is None:
            raise ValueError("Need at least one: key or value")
        headers = [] if headers is None else headers
        if not isinstance(headers, list):
            raise TypeError("headers must be list-type")
        if not all(
            isinstance(h, tuple)
            and len(h) == 2
            and isinstance(h[0], str)
            and isinstance(h[1], bytes)
            for h in headers
        ):
            raise TypeError("All headers items must be (str, bytes) tuples")
        wire_value = self._serializer.serialize(topic, headers, value)
        if not isinstance(wire_value, bytes | type(None)):
            raise TypeError(f"Unsupported type for serialized value: {type(wire_value)}")
        error = self.fail(topic, wire_value, len(self.sent))
        self.sent.append(Sent(topic, key, wire_value, list(headers), acked=error is None))
        self.log.append(f"send {topic}")
        return FakeFuture(error)

    def flush(self, timeout: float | None = None) -> None:
        self.log.append("flush")

    def close(self, timeout: float | None = None) -> None:
        self.log.append("producer close")

    # Transactions (exactly-once), logged in order; offsets sent go to ``txn_offsets``.
    def init_transactions(self) -> None:
        self.log.append("init_transactions")

    def begin_transaction(self) -> None:
        self.log.append("begin_transaction")

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any) -> None:
        self.log.append("send_offsets_to_transaction")
        self.txn_offsets = dict(offsets)

    def commit_transaction(self) -> None:
        self.log.append("commit_transaction")

    def abort_transaction(self) -> None:
        self.log.append("abort_transaction")

    def acked(self, topic: str | None = None) -> list[Sent]:
        return [s for s in self.sent if s.acked and (topic is None or s.topic == topic)]


class FakeConsumer:
    """One partition; ``batches`` are returned by successive polls (unless paused)."""

    def __init__(
        self,
        log: list[str],
        batches: list[list[Record]],
        commit_error: Callable[[int], BaseException | None] = lambda _: None,
        topic: str = TOPIC,
    ) -> None:
        self.log, self.batches, self.commit_error = log, batches, commit_error
        self.committed_offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        self.tp = TopicPartition(topic, 0)
        self.owned = {self.tp}
        self._paused: set[TopicPartition] = set()
        self._end = max((r.offset + 1 for b in batches for r in b), default=0)
        self._position = 0
        self.commits = 0
        self.on_poll: Callable[[], None] = lambda: None

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.log.append("subscribe")
        self.listener = listener

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        self.on_poll()
        if self._paused or not self.batches or self.tp not in self.owned:
            return {}
        batch = self.batches.pop(0)
        self._position = batch[-1].offset + 1
        return {self.tp: batch}

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> BaseException | None:
        self.commits += 1
        error = self.commit_error(self.commits)
        if error is None:
            self.committed_offsets.update(offsets)
        return error

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.log.append("commit")
        error = self._commit(offsets)
        if error is not None:
            raise error

    def commit_async(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any = None
    ) -> None:
        self.log.append("commit_async")
        error = self._commit(offsets)
        if callback is not None:
            callback(offsets, error if error is not None else {})

    def highwater(self, tp: TopicPartition) -> int:
        return self._end

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._position

    def end_offsets(
        self, tps: list[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int]:
        return {tp: self._end for tp in tps}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def topics(self) -> set[str]:
        return {self.tp.topic}

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        meta = self.committed_offsets.get(tp)
        return None if meta is None else meta.offset

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        self.log.append("consumer close")

    def group_metadata(self) -> str:
        return "fake-group-metadata"

    def pause(self, *tps: TopicPartition) -> None:
        self.log.append("pause")
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.log.append("resume")
        self._paused -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.log.append(f"seek {offset}")

    def revoke(self) -> None:
        """A rebalance takes the partition away (as kafka-python would, inside a poll)."""
        self.owned = set()
        if self.listener is not None:
            self.listener.on_partitions_revoked({self.tp})


def worker_producer_options(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> dict[str, Any]:
    """The options a :class:`~worker.runtime.loop.Worker` with ``settings`` asks its producer
    factory for beyond the defaults (the factory stands in, and the worker's start stops there)."""
    from worker.runtime import kafka as kafka_clients
    from worker.runtime import loop

    seen: dict[str, Any] = {}

    class _Stop(Exception):
        pass

    def producer(bootstrap: str, settings: Settings, **extra: Any) -> Any:
        seen.update(extra)
        raise _Stop

    monkeypatch.setattr(kafka_clients, "producer", producer)
    with pytest.raises(_Stop):
        loop.Worker(settings, "127.0.0.1:9", None, None, None, pipeline=object())  # type: ignore[arg-type]
    return seen
