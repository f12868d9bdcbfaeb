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
