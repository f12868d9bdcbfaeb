"""Flow control: keep the consumer in its group while the loop cannot take new records.

kafka-python's consumer is not thread-safe, so the loop thread owns it; compute runs on another
thread. A member that does not poll for ``max_poll_interval_ms`` is evicted, and its
partitions' next owner replays them. So while a batch is slow to compute, or its results wait
for a broker that is away, every assigned partition is paused and the loop keeps polling: no
records arrive, heartbeats and rebalances are served, and the member stays. Partitions are
resumed once the batch is committed.

A rebalance during such a wait may take partitions away. Revocations are numbered as they come
(:meth:`mark` is the latest number); :attr:`revoked` holds those after the mark of the results
being delivered, set by :meth:`delivering` (or by :meth:`new_poll`, for loops that deliver a poll
before the next one): the delivery drops the results of partitions no longer assigned (another
member replays them) and repositions those assigned back to this member. Numbering rather than
one set lets the worker hold one chunk's results across its next poll (it delivers them while
the next chunk computes): a revocation during that poll concerns the held chunk, not the
records the poll returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition

from worker.metrics import Health

log = logging.getLogger(__name__)


class FlowControl:
    """Pause-and-poll waiting for one consumer (see the module docstring)."""

    def __init__(self, consumer: Any, health: Health, max_poll_interval_ms: int) -> None:
        self.consumer = consumer
        self.health = health
        # Heartbeats run on kafka-python's own thread; only the poll interval needs polls. So a
        # normal batch just runs (no pause, no extra poll that could delay its commit).
        self.patience_s = min(5.0, max_poll_interval_ms / 4000)
        self.paused = False
        self._revocations: list[tuple[int, TopicPartition]] = []
        self._seq = 0  # number of the latest revocation
        self._since = 0  # the delivery in progress concerns revocations after this number

    def note_revoked(self, tp: TopicPartition) -> None:
        self._seq += 1
        self._revocations.append((self._seq, tp))

    def mark(self) -> int:
        """The latest revocation's number: take it when a poll returns its records."""
        return self._seq

    def revoked_since(self, mark: int) -> set[TopicPartition]:
        return {tp for seq, tp in self._revocations if seq > mark}

    @property
    def revoked(self) -> set[TopicPartition]:
        """Partitions revoked since the records now being delivered were polled."""
        return self.revoked_since(self._since)

    def delivering(self, mark: int) -> None:
        """Results of records polled at ``mark`` are delivered now (the oldest in flight, so
        older revocations concern nothing any more)."""
        self._since = mark
        self._revocations = [(seq, tp) for seq, tp in self._revocations if seq > mark]

    def new_poll(self) -> None:
        """A new batch starts: revocations before it no longer concern it."""
        self.delivering(self._seq)

    def wait(self, work: Future[Any]) -> None:
        """Return when ``work`` is done, polling paused while it takes longer than patience."""
        if wait([work], timeout=self.patience_s).done:
            return
        # Said once per slow chunk: a worker that answers nothing for a while shows why here.
        log.info(
            "a chunk is still computing after %.1f s: partitions paused until it ends",
            self.patience_s,
        )
        self._pause()
        try:
            while not work.done():
                self._poll_paused(0.02)
        finally:
            self.resume()

    def idle(self, seconds: float) -> None:
        """Wait ``seconds`` (a retry's backoff) without leaving the group."""
        self._pause()
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._poll_paused(min(left, 0.1))

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.consumer.resume(*self.consumer.paused())

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.consumer.pause(*self.consumer.assignment())

    def _poll_paused(self, seconds: float) -> None:
        self.health.beat()
        stray = self.consumer.poll(timeout_ms=max(1, int(seconds * 1000)))
        for tp, records in stray.items():  # cannot happen while paused; never drop them
            self.consumer.seek(tp, min(r.offset for r in records))


class LagGauges(Protocol):
    """Where the lag of partitions lives (the worker's or the exporter's metrics)."""

    def remove_lag(self, topic: str, partition: int) -> None: ...


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps new partitions paused while the loop waits, and readiness, lag and
    :attr:`FlowControl.revoked` truthful. Runs on kafka-python's network thread, where nothing
    may block (no commit): a batch whose partitions go is not committed, and their next owner
    replays it (at-least-once; in exactly-once mode its transaction is aborted)."""

    def __init__(
        self,
        flow: FlowControl,
        metrics: LagGauges,
        resume_at: Callable[[TopicPartition], int | None] | None = None,
    ) -> None:
        """``resume_at``: where a partition assigned (back) to this member must resume, when
        its committed offset is behind what this member already delivered (None: there)."""
        self.flow, self.metrics, self.resume_at = flow, metrics, resume_at

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.flow.health.set_ready(False)
        for tp in revoked:  # a partition we no longer own must not report stale lag
            self.flow.note_revoked(tp)
            self.metrics.remove_lag(tp.topic, tp.partition)

    def on_partitions_assigned(self, assigned: Any) -> None:
        if self.flow.paused and assigned:
            self.flow.consumer.pause(*assigned)  # still busy: take nothing new yet
        resume_at = self.resume_at
        if resume_at is not None:
            for tp in assigned:
                offset = resume_at(tp)
                if offset is not None:  # else kafka-python starts from the committed offset
                    self.flow.consumer.seek(tp, offset)
        self.flow.health.set_ready(bool(assigned))
