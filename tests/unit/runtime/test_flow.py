"""Revocations are numbered, so results held across a poll see exactly the revocations that
came after their own poll (worker.runtime.flow)."""

from __future__ import annotations

from kafka import TopicPartition

from worker.metrics import Health
from worker.runtime.flow import FlowControl

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_revocations_after_a_mark_concern_what_was_polled_at_it() -> None:
    flow = FlowControl(consumer=None, health=Health(), max_poll_interval_ms=300_000)
    flow.note_revoked(A)  # before the first chunk's poll returned
    first = flow.mark()
    flow.note_revoked(B)  # while the first chunk waits
    second = flow.mark()
    assert flow.revoked_since(first) == {B} and flow.revoked_since(second) == set()
    flow.delivering(first)
    assert flow.revoked == {B}
    flow.note_revoked(A)  # during the first chunk's delivery: it concerns both chunks
    assert flow.revoked == {A, B} and flow.revoked_since(second) == {A}
    flow.delivering(second)
    assert flow.revoked == {A}


def test_a_new_poll_forgets_every_earlier_revocation() -> None:
    flow = FlowControl(consumer=None, health=Health(), max_poll_interval_ms=300_000)
    flow.note_revoked(A)
    flow.new_poll()
    assert flow.revoked == set()
    flow.note_revoked(B)
    assert flow.revoked == {B}


def test_a_chunk_that_outlasts_patience_pauses_polls_and_says_so(caplog: object) -> None:
    import logging
    import threading
    from concurrent.futures import Future
    from typing import Any

    class Consumer:
        def __init__(self) -> None:
            self.paused_now: set[Any] = set()
            self.polls = 0

        def assignment(self) -> set[Any]:
            return {A, B}

        def pause(self, *tps: Any) -> None:
            self.paused_now |= set(tps)

        def paused(self) -> set[Any]:
            return set(self.paused_now)

        def resume(self, *tps: Any) -> None:
            self.paused_now -= set(tps)

        def poll(self, timeout_ms: int = 0) -> dict[Any, Any]:
            self.polls += 1
            return {}

    consumer = Consumer()
    flow = FlowControl(consumer=consumer, health=Health(), max_poll_interval_ms=400)  # 0.1 s
    work: Future[int] = Future()
    threading.Timer(0.4, lambda: work.set_result(1)).start()
    with caplog.at_level(logging.INFO, logger="worker.runtime.flow"):  # type: ignore[attr-defined]
        flow.wait(work)
    assert consumer.polls > 0 and consumer.paused_now == set()  # paused meanwhile, resumed
    assert "still computing after 0.1 s: partitions paused" in caplog.text  # type: ignore[attr-defined]


class _Seeks:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


class _NoLag:
    def remove_lag(self, topic: str, partition: int) -> None:
        pass


def test_an_assignment_makes_the_member_ready_and_resumes_partitions_given_back() -> None:
    from worker.runtime.flow import Rebalance

    for resume_at in (None, {A: 7}.get):
        consumer, health = _Seeks(), Health()
        flow = FlowControl(consumer=consumer, health=health, max_poll_interval_ms=300_000)
        listener = Rebalance(flow, _NoLag(), resume_at)
        listener.on_partitions_revoked({A, B})
        assert not health.ready()
        listener.on_partitions_assigned({A, B})
        assert health.ready()
        # A's results up to offset 7 were delivered and their commit waits: A resumes there;
        # B (nothing held back) starts from its committed offset, as kafka-python sets it.
        assert consumer.seeks == ([] if resume_at is None else [(A, 7)])
