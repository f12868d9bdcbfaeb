"""A watchdog for a consumer stuck outside its group, and the one remedy: a new consumer.

Seen with kafka-python 3.0.12 against a real broker, a few times in a hundred test runs: a
member joins its group (generation 2, elected leader), never gets its assignment, and consumes
nothing; the session goes on, so the broker sees a live member and no other one takes its
partitions. Neither a longer wait nor a poll ends it. :class:`MembershipWatchdog` notices a
consumer that has had no partitions for ``stuck_after_s`` while its membership is not stable
(kafka-python's coordinator state, read where that client exposes it), and the loop replaces
the consumer: the old one is closed (it leaves the group) and a new one joins afresh.

A member that is stable without partitions (more members than partitions) is idle, not stuck,
and is left alone, so the watchdog never makes a healthy group rebalance.

>>> now = [0.0]
>>> class Member:
...     _coordinator = type("C", (), {"state": "<rebalancing>"})()
...     def assignment(self): return set()
>>> dog = MembershipWatchdog(60.0, clock=lambda: now[0])
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


def member_state(consumer: Any) -> str | None:
    """kafka-python's coordinator state (``<stable>``, ``<rebalancing>``, ``<unjoined>``), or
    None where the client does not expose it (then the watchdog never acts)."""
    state = getattr(getattr(consumer, "_coordinator", None), "state", None)
    return state if isinstance(state, str) else None


def replace_consumer(consumer: Any) -> None:
    """Close a stuck consumer (it leaves its group) within a few seconds, whatever happens."""
    try:
        consumer.close(autocommit=False, timeout_ms=5000)
    except Exception as exc:  # noqa: BLE001 - the new consumer joins all the same
        log.warning("closing the stuck consumer failed: %r", exc)


class MembershipWatchdog:
    """Says when a consumer has been without partitions, and not stable, for too long."""

    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._since: float | None = None

    def reset(self) -> None:
        self._since = None

    def stuck(self, consumer: Any) -> bool:
        """Call after each poll; True once the consumer should be replaced."""
        state = member_state(consumer)
        if consumer.assignment() or state is None or state == STABLE:
            self._since = None
            return False
        now = self._clock()
        if self._since is None:
            self._since = now
        return now - self._since >= self.stuck_after_s

    def waited_s(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since
