"""A watchdog for a consumer stuck outside its group, and the one remedy: a new consumer.

Seen with kafka-python 3.0.12 against a real broker, a few times in a hundred test runs: a
member joins its group, never gets a partition, and consumes nothing while records wait; its
log ends, when it is stopped, with ``LeaveGroup ... UnknownMemberIdError`` (the broker had long
forgotten it). Neither a longer wait nor a poll ends it. :class:`MembershipWatchdog` notices a
consumer that has had no partitions for ``stuck_after_s`` while its join has not ended (kafka-
python's coordinator state, read where that client exposes it), or while records wait on the
topic and the group commits nothing, or, holding partitions, has had no records and no fetch
answer for any of them, or no records for two windows while records that were already there a
window ago wait on its own partitions (its client believing it assigned while the broker had
dropped it is the suspected cause); the loop then replaces the consumer: the old one is closed
(it leaves the group) and a new one joins afresh. Which of these the stalls seen were is not
proven: a replacement logs the member's state, so the next one will tell. One cause is known and
closed where it starts (:func:`guard_join`): a leader's rejoin that a short poll left stranded,
after which the broker forgot the member (the ``LeaveGroup ... UnknownMemberIdError`` above).

A member without partitions among members that work (more members than partitions), or on a
topic with nothing waiting, is idle, not stuck, and is left alone: the watchdog never makes a
healthy group rebalance.

>>> now = [0.0]
>>> class Member:
...     _coordinator = type("C", (), {"state": "<rebalancing>"})()
...     def assignment(self): return set()
>>> dog = MembershipWatchdog("scans.events", 60.0, clock=lambda: now[0])
>>> dog.stuck(Member()), (now.__setitem__(0, 61.0), dog.stuck(Member()))[1]
(False, True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger(__name__)

STABLE: Final = "<stable>"  # kafka.structs.MemberState.STABLE
# Longer than a session (10 s) plus an unanswered request (30 s): a join that is merely slow
# (the broker waits for every member to rejoin) usually ends well within it.
STUCK_AFTER_S: Final = 45.0


def guard_join(consumer: Any) -> Any:
    """Close a race in kafka-python 3.0's group join that strands a member; returns ``consumer``.

    Seen here (a debug log of a worker that stalled after its first poll, in the fault tests
    with the compute process on, 2 of 3 runs): a rejoin that kafka-python starts itself because
    the topic's metadata changed (the leader joined before it knew the partitions, or a partition
    was added) runs as a task on its network thread. The leader's assignment step records the
    metadata it assigned, and from that moment ``need_rejoin()`` says False: a ``poll()`` that
    comes between that step and the SyncGroup answer (any poll whose timeout ran out mid-join,
    then the next one) no longer waits for the task, so its result is never applied. The member
    stays ``<rebalancing>`` with its old partitions revoked, its heartbeats off (they are turned
    back on only when the result is applied), and the broker drops it after the session timeout:
    the group is ``Empty`` while the member believes it holds partitions, and it fetches nothing
    for ever.

    The guard: ``need_rejoin()`` also says True while a join task is pending or finished
    unapplied, so the next poll waits for it (pending) or joins again (finished: kafka-python
    starts a fresh attempt, which the broker answers with the current or a new generation).
    Where the client lacks the attributes this relies on (another kafka-python), the consumer is
    left as it is, with a warning; :class:`MembershipWatchdog` remains the last resort.

    >>> class Coordinator:
    ...     _join_task = None
    ...     def need_rejoin(self): return False
    >>> consumer = type("C", (), {"_coordinator": Coordinator()})()
    >>> _ = guard_join(consumer)
    >>> consumer._coordinator.need_rejoin()
    False
    >>> consumer._coordinator._join_task = object()  # a join attempt nobody awaited yet
    >>> consumer._coordinator.need_rejoin()
    True
    """
    coordinator = getattr(consumer, "_coordinator", None)
    original = getattr(coordinator, "need_rejoin", None)
    if coordinator is None or not callable(original) or not hasattr(coordinator, "_join_task"):
        log.warning(
            "this kafka-python has no join task to guard (%s): a member stranded mid-join is "
            "left to the membership watchdog",
            type(coordinator).__name__,
        )
        return consumer

    def need_rejoin() -> bool:
        return coordinator._join_task is not None or bool(original())

    coordinator.need_rejoin = need_rejoin
    return consumer


def member_state(consumer: Any) -> str | None:
    """kafka-python's coordinator state (``<stable>``, ``<rebalancing>``, ``<unjoined>``), or
    None where the client does not expose it (then the watchdog never acts)."""
    state = getattr(getattr(consumer, "_coordinator", None), "state", None)
    return state if isinstance(state, str) else None


def replace_consumer(
    consumer: Any, factory: Callable[[], Any], watchdog: MembershipWatchdog, who: str
) -> Any:
    """Say why, close the stuck ``consumer`` (it leaves its group) within a few seconds whatever
    happens, and return a fresh one from ``factory``; the caller subscribes it and hands it to
    whatever holds the old one (its flow control and delivery)."""
    log.warning(
        "the %s's consumer got nothing for %.0f s (membership %s, %d partitions): replacing it",
        who,
        watchdog.waited_s(),
        member_state(consumer),
        len(consumer.assignment()),
    )
    watchdog.reset()
    try:
        consumer.close(autocommit=False, timeout_ms=5000)
    except Exception as exc:  # noqa: BLE001 - the new consumer joins all the same
        log.warning("closing the stuck consumer failed: %r", exc)
    return factory()


def _highwater(consumer: Any, tp: Any) -> int | None:
    try:
        value = consumer.highwater(tp)
    except Exception:  # noqa: BLE001 - revoked between the two calls
        return None
    return value if isinstance(value, int) else None


class MembershipWatchdog:
    """Says when a consumer should be replaced (see the module docstring).

    Without partitions for ``stuck_after_s``: a member whose join has not ended (not stable)
    is stuck; a stable one (or one whose state the client does not expose) is stuck only if
    the topic has records waiting and the group committed nothing in all that time, i.e. no
    member works on them. One idle among busy members, or an idle topic, is left alone. With
    partitions: stuck when no records came and no fetch answered for any of them (no high
    watermark known) for ``stuck_after_s``, or when records that were already beyond our
    position on one of them a window before are still not fetched a window later.

    ``_committed`` is None while the timer runs for an assigned member, a dict (the group's
    committed offsets, empty when unknown) while it runs for one without partitions.
    """

    def __init__(
        self, topic: str, stuck_after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.topic, self.stuck_after_s = topic, stuck_after_s
        self._clock = clock
        self._since: float | None = None
        self._committed: dict[Any, int] | None = None
        # Assigned: our positions on partitions with records beyond them, one window ago.
        self._waiting: dict[Any, int] = {}

    def reset(self) -> None:
        self._since, self._committed, self._waiting = None, None, {}

    def stuck(self, consumer: Any) -> bool:
        """Call after each poll that brought no records (:meth:`reset` after one that did);
        True once the consumer should be replaced."""
        assigned = consumer.assignment()
        now = self._clock()
        if assigned:
            # Partitions, but no fetch ever answered for any of them (no high watermark known)
            # all the while: seen too (the broker had forgotten the member, which went on
            # believing it was assigned). A healthy idle member learns the watermark within a
            # fetch wait (500 ms), so it is never taken for stuck.
            if self._since is None or self._committed is not None:
                self._since, self._committed, self._waiting = now, None, {}
                return False
            if now - self._since < self.stuck_after_s:
                return False
            if all(_highwater(consumer, tp) is None for tp in assigned):
                return True
            # Records already there a whole window ago, on our own partitions, still not
            # fetched: the member believes it is assigned, and fetches nothing. A healthy one
            # fetches them within a poll. (Noted one window, judged the next: one ListOffsets
            # per window of idleness, never a verdict on records that just arrived.)
            behind = self._behind(consumer, assigned)
            if any(behind.get(tp) == position for tp, position in self._waiting.items()):
                return True
            self._since, self._waiting = now, behind
            return False
        if self._since is None or self._committed is None:
            self._since, self._committed = now, {}
            if member_state(consumer) != "<rebalancing>":
                self._committed = self._progress(consumer) or {}
            return False
        if now - self._since < self.stuck_after_s:
            return False
        state = member_state(consumer)
        if state is not None and state != STABLE:
            return True  # a join that never ended
        before, after = self._committed, self._progress(consumer)
        waiting = after is not None and self._lag(consumer, after) > 0
        if before and after == before and waiting:
            return True  # records wait, nobody commits, and we hold no partition
        self._since, self._committed = now, after or {}  # idle, or others work: look later
        return False

    @staticmethod
    def _behind(consumer: Any, assigned: set[Any]) -> dict[Any, int]:
        """Our position on each assigned partition that has records beyond it (bounded waits;
        nothing known: nothing behind)."""
        try:
            ends = consumer.end_offsets(list(assigned), timeout_ms=5000)
            positions = {tp: consumer.position(tp, timeout_ms=1000) for tp in assigned}
        except Exception:  # noqa: BLE001 - no answer now: no verdict now
            return {}
        return {
            tp: position
            for tp, position in positions.items()
            if isinstance(position, int) and ends.get(tp, 0) > position
        }

    def waited_s(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def _progress(self, consumer: Any) -> dict[Any, int] | None:
        """The group's committed offset of each partition (None when the broker won't say)."""
        from kafka import TopicPartition

        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            return {tp: consumer.committed(tp, timeout_ms=10_000) or 0 for tp in tps}
        except Exception:  # noqa: BLE001 - no answer now: no verdict now
            return None

    @staticmethod
    def _lag(consumer: Any, committed: dict[Any, int]) -> int:
        try:
            ends = consumer.end_offsets(list(committed))
        except Exception:  # noqa: BLE001 - no answer now: nothing known to wait
            return 0
        return sum(max(0, ends.get(tp, 0) - offset) for tp, offset in committed.items())
