"""Delivery: produce a batch's results, then commit its offsets, so nothing is lost or stuck.

At-least-once (default): every message is sent, and offsets are committed only once the broker
acknowledged them all (``acks=all``, idempotent producer). Failures are sorted per message:

* refused for good, because of this record (too large, invalid; ``send()`` refusing its
  arguments): that record alone becomes a dead letter (``result_refused``), or a smaller dead
  letter if the dead letter itself is refused, and the rest of the batch goes on;
* anything else is the broker's or the network's (unavailable, timeouts, not leader, not
  authorised): the unacknowledged messages alone are sent again after a backoff with jitter,
  without limit, while the consumer stays in its group (paused) and ``/healthz`` turns red once
  nothing has been committed for ``stall_timeout_s``. Acknowledged messages are never sent again.

Commits are asynchronous: the results are already safe, so a lost commit costs at most a replay
and the next commit covers it; :meth:`Delivery.commit_pending` makes them durable on drain and
shutdown. They are also spaced: at most one every ``commit_interval_ms`` (settings), the offsets
of the chunks between held back (:meth:`Delivery.commit_deferred` commits them, as the loop does
when a poll brings nothing). A partition revoked and given back to this member resumes after
them (:meth:`Delivery.deferred_position`); one that goes to another member is replayed there
from its last commit. Exactly-once: results and offsets go in one transaction; any failure
aborts it, and the whole batch is sent again in a new one (refused records replaced by dead
letters first).

Results of partitions revoked while they waited are dropped: their next owner replays them. A
partition revoked and assigned back to this member (kafka-python's eager rebalance revokes all)
keeps its results, which are committed, and the partition is positioned after them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from kafka import OffsetAndMetadata, TopicPartition
from kafka import errors as kafka_errors

from worker.runtime.flow import FlowControl
from worker.runtime.kafka import wire_headers
from worker.runtime.observer import Observer
from worker.runtime.results import (
    EventResult,
    reduced_dead_letter,
    refused_result,
    without_alert,
)
from worker.settings import Settings

log = logging.getLogger(__name__)

# Errors that are about one record and will not pass by retrying it.
REFUSED: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.InvalidTimestampError,
    ValueError,  # send() refusing its arguments (kafka-python's own checks)
    TypeError,
    AssertionError,
)
FATAL: tuple[type[BaseException], ...] = (
    kafka_errors.ProducerFencedError,  # another instance with our transactional id took over
    kafka_errors.IllegalStateError,  # the producer is closed or its transaction state broken
)


class _Failed:
    """A send that raised at once, shaped like kafka-python's future."""

    is_done = True

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc

    def failed(self) -> bool:
        return True


@dataclass
class Sending:
    """A batch on its way: per result, the messages acknowledged and the sends in flight."""

    batch: list[EventResult | None]
    acked: list[set[int]]
    inflight: dict[tuple[int, int], Any]

    def forget(self, i: int) -> None:
        """Result ``i`` was dropped: its sends in flight no longer concern the batch."""
        for key in [k for k in self.inflight if k[0] == i]:
            del self.inflight[key]


class Delivery:
    """Produces and commits batches for one worker (see the module docstring)."""

    def __init__(
        self,
        producer: Any,
        consumer: Any,
        settings: Settings,
        flow: FlowControl,
        observer: Observer,
        commit_interval_s: float | None = None,
    ) -> None:
        """``commit_interval_s``: the least time between two commits (None: the settings'
        ``commit_interval_ms``; 0: a commit for every delivery)."""
        self.producer, self.consumer, self.settings = producer, consumer, settings
        self.commit_interval_s = (
            settings.commit_interval_ms / 1e3 if commit_interval_s is None else commit_interval_s
        )
        self.flow, self.observer = flow, observer
        self.transactional = settings.delivery == "exactly-once"
        # Offsets committed asynchronously and not yet confirmed by a synchronous commit.
        self._uncertain: dict[TopicPartition, OffsetAndMetadata] = {}
        # Offsets of acknowledged results whose commit waits for the commit interval. Replaced,
        # never cleared in place: the rebalance listener reads it from kafka-python's thread.
        self._deferred: dict[TopicPartition, OffsetAndMetadata] = {}
        self._last_commit = -math.inf  # the first delivery is committed at once
        self._backoff = 0.0
        self.backoff_s = (0.2, 5.0)  # first and largest pause between attempts (tests shrink it)

    def deliver(self, results: list[EventResult]) -> list[EventResult]:
        """Produce and commit ``results``; return those committed (a refused finding replaced by
        its dead letter). Blocks until done, however long the broker is away."""
        return self.finish(self.start(results))

    def start(self, results: list[EventResult]) -> Sending:
        """At-least-once: send ``results`` now, without waiting; :meth:`finish` waits for the
        acknowledgements (sending again what failed) and commits. The worker finishes them
        while the next chunk computes, so the findings are on their way meanwhile. Exactly-once:
        nothing is sent before :meth:`finish` opens the transaction."""
        batch: list[EventResult | None] = list(results)
        sending = Sending(batch, [set() for _ in batch], {})
        if not self.transactional:
            self._drop_revoked(batch)
            self._send_missing(sending)
        return sending

    def finish(self, sending: Sending) -> list[EventResult]:
        """What :meth:`deliver` does, for results :meth:`start` may have sent already."""
        batch = sending.batch
        for i in self._drop_revoked(batch):
            sending.forget(i)
        if not any(batch):
            return []
        t0 = time.perf_counter()
        if self.transactional:
            done = self._transaction(batch)
            produce_s, commit_s = time.perf_counter() - t0, 0.0
        else:
            done = self._produce(sending)
            t1 = time.perf_counter()
            if done:
                self._commit_async(done)
            produce_s, commit_s = t1 - t0, time.perf_counter() - t1
        self.observer.delivered(produce_s, commit_s)
        self._backoff = 0.0
        self._reposition(done)
        return done

    def _reposition(self, done: list[EventResult]) -> None:
        """A partition revoked and given back to us while its batch waited restarts, in
        kafka-python, from its committed offset, which may predate this batch's commit: point
        it after the batch, so that its records are neither lost nor computed twice."""
        again = self.flow.revoked & self.consumer.assignment()
        ends: dict[TopicPartition, int] = {}
        for r in done:
            if r.tp in again:
                ends[r.tp] = max(ends.get(r.tp, 0), r.record.offset + 1)
        for tp, offset in ends.items():
            self.consumer.seek(tp, offset)

    # -- at-least-once -------------------------------------------------------------------------
    def _send_missing(self, sending: Sending) -> None:
        """Send every live message neither acknowledged nor in flight."""
        for i, result in enumerate(sending.batch):
            if result is None:
                continue
            for m in result.live_messages():
                if m not in sending.acked[i] and (i, m) not in sending.inflight:
                    sending.inflight[(i, m)] = self._send(result, m)

    def _produce(self, sending: Sending) -> list[EventResult]:
        """Send until every message is acknowledged; each message is sent again only after it
        failed, never while the producer still holds it."""
        batch, acked, inflight = sending.batch, sending.acked, sending.inflight
        while True:
            self._send_missing(sending)
            if not inflight:
                return [r for r in batch if r is not None]
            self._flush()
            transient: BaseException | None = None
            for (i, m), future in list(inflight.items()):
                if not future.is_done:
                    continue
                del inflight[(i, m)]
                if not future.failed():
                    acked[i].add(m)
                    continue
                error = future.exception
                if isinstance(error, FATAL):
                    raise error
                if not isinstance(error, REFUSED):
                    transient = error
                elif (replacement := self._refused(batch[i], m, error)) is None:
                    transient = error  # nothing left to drop: not this record's fault
                else:
                    alert = m >= (batch[i] or replacement).essential
                    batch[i] = replacement
                    if alert:
                        acked[i].add(m)  # the alert is given up
                        continue
                    acked[i] = set()
                    for key in [k for k in inflight if k[0] == i]:
                        # A stray SR or alert of a refused finding may still land: the SR's
                        # SOP Instance UID is its finding's, so a later replay replaces it.
                        del inflight[key]
            if transient is not None:
                self._back_off(transient, "produce")
            elif inflight:
                self.flow.idle(0.05)  # the producer still works on it: stay in the group
            for i in self._drop_revoked(batch):
                sending.forget(i)

    # -- exactly-once --------------------------------------------------------------------------
    def _transaction(self, batch: list[EventResult | None]) -> list[EventResult]:
        """Results and offsets in one transaction; any failure aborts it and the batch is sent
        again whole, refused records replaced by their dead letters first."""
        while True:
            results = [r for r in batch if r is not None]
            if not results:
                return []
            self.producer.begin_transaction()
            futures = {
                (i, m): self._send(r, m)
                for i, r in enumerate(batch)
                if r is not None
                for m in r.live_messages()
            }
            while True:
                self._flush()
                if all(f.is_done for f in futures.values()):
                    break
                self.flow.idle(0.05)
            failed = [(k, f.exception) for k, f in futures.items() if f.failed()]
            try:
                for (i, m), error in failed:
                    if isinstance(error, FATAL) or not isinstance(error, REFUSED):
                        raise error
                    replacement = self._refused(batch[i], m, error)
                    if replacement is None:  # nothing left to drop: not this record's fault
                        raise error
                    batch[i] = replacement
                if not failed:
                    self.producer.send_offsets_to_transaction(
                        _offsets(results), self.consumer.group_metadata()
                    )
                    self.producer.commit_transaction()
                    return results
                self._abort()
            except FATAL:
                raise
            except Exception as exc:  # noqa: BLE001 - abort, back off, send the batch again
                self._abort()
                self._back_off(exc, "transaction")
            self._drop_revoked(batch)

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction()
        except FATAL:
            raise
        except Exception as exc:  # noqa: BLE001 - the next begin_transaction tells
            log.warning("abort_transaction failed: %r", exc)

    # -- shared --------------------------------------------------------------------------------
    def _send(self, result: EventResult, message: int) -> Any:
        topic, value, headers = result.messages[message] or ("", None, [])
        try:
            return self.producer.send(
                topic, key=result.key, value=value, headers=wire_headers(headers)
            )
        except Exception as exc:  # noqa: BLE001 - judged like an asynchronous failure
            return _Failed(exc)

    def _flush(self) -> None:
        # Unfinished sends stay pending and are waited for again, after a poll: never wait
        # longer than the flow's patience without one, or the member outlives its poll
        # interval and is evicted while it waits for the broker.
        with contextlib.suppress(kafka_errors.KafkaTimeoutError):
            self.producer.flush(timeout=min(self.flow.patience_s, self.settings.grace_period_s))

    def _refused(
        self, result: EventResult | None, message: int, error: BaseException
    ) -> EventResult | None:
        """The result that replaces one whose message ``message`` the broker refused for good;
        None when nothing is left to drop (then it is retried like a broker failure)."""
        if result is None:
            return None
        if message >= result.essential:  # an alert: the finding stands; it is lost, loudly
            log.error("alert of offset %s refused for good: %r", result.record.offset, error)
            return without_alert(result, message)
        replacement = (
            refused_result(result, error, self.settings)
            if result.finding is not None
            else reduced_dead_letter(result, error, self.settings)
        )
        if replacement is None:  # even the bare error headers are refused
            log.error("the dead-letter topic refuses even a bare dead letter: %r", error)
            return None
        self.observer.replay("refused", error)
        return replacement

    def _drop_revoked(self, batch: list[EventResult | None]) -> list[int]:
        """Forget results of partitions no longer ours (their next owner replays them)."""
        owned = self.consumer.assignment()
        dropped = [i for i, r in enumerate(batch) if r is not None and r.tp not in owned]
        for i in dropped:
            batch[i] = None
        if dropped:
            log.info(
                "%d results dropped: partitions revoked, replayed by their owner", len(dropped)
            )
        return dropped

    def _back_off(self, error: BaseException, cause: str) -> None:
        self.observer.replay(cause, error)
        first, largest = self.backoff_s
        self._backoff = min(largest, max(first, self._backoff * 2))
        log.warning("%s failed, sending again: %r", cause, error)
        self.flow.idle(random.uniform(0.5, 1.0) * self._backoff)  # jitter, and stay in the group

    def _commit_async(self, results: list[EventResult]) -> None:
        deferred = dict(self._deferred)
        for tp, om in _offsets(results).items():
            if tp not in deferred or deferred[tp].offset < om.offset:
                deferred[tp] = om
        self._deferred = deferred
        if time.monotonic() - self._last_commit >= self.commit_interval_s:
            self.commit_deferred()

    def commit_deferred(self) -> None:
        """Commit, asynchronously, the offsets the commit interval held back (those of
        partitions still ours: the others are replayed by their new owner)."""
        if not self._deferred:
            return
        owned = self.consumer.assignment()
        offsets = {tp: om for tp, om in self._deferred.items() if tp in owned}
        self._deferred = {}
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            self.consumer.commit_async(offsets, callback=self._on_commit)
        except Exception as exc:  # noqa: BLE001 - the worst outcome is a replay
            self._on_commit(offsets, exc)
        self._uncertain.update(offsets)

    def deferred_position(self, tp: TopicPartition) -> int | None:
        """Where ``tp`` resumes when it is given back to this member: after its results whose
        commit the interval held back (None: nothing held back). kafka-python would restart
        it from its committed offset, and compute and send those results again."""
        held_back = self._deferred.get(tp)
        return None if held_back is None else held_back.offset

    def _on_commit(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):  # the next commit covers it, or a replay does
            log.warning("asynchronous commit failed: %r", response)
            self.observer.replay("commit", response)

    def commit_pending(self) -> None:
        """Commit synchronously every offset committed asynchronously since the last call, and
        those the commit interval held back."""
        self._uncertain.update(self._deferred)  # newer than any commit of their partitions
        self._deferred = {}
        if not self._uncertain:
            return
        owned = self.consumer.assignment()
        offsets = {tp: om for tp, om in self._uncertain.items() if tp in owned}
        self._uncertain.clear()  # partitions no longer ours: their next owner replays
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - kept, and tried again on the next call
                log.warning("commit failed, will try again: %r", exc)
                self.observer.replay("commit", exc)
                for tp, om in offsets.items():
                    self._uncertain.setdefault(tp, om)


def _offsets(results: list[EventResult]) -> dict[TopicPartition, OffsetAndMetadata]:
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for r in results:
        if r.tp not in offsets or offsets[r.tp].offset <= r.record.offset:
            offsets[r.tp] = OffsetAndMetadata(r.record.offset + 1, "", -1)
    return offsets
