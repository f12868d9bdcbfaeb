"""The consumer loop: poll -> process -> produce -> commit, and nothing else.

Each poll takes at most ``max_poll_records`` events. They are computed, in chunks of about
``chunk_target_ms`` of compute (:mod:`worker.runtime.chunks`), on one compute thread by
the pipeline (:class:`worker.pipeline.Pipeline`, the same composition ``analyze`` and the
benchmark use; with ``SCANSTREAM_COMPUTE_PROCESS``, in a child process, two chunks at a time:
:mod:`worker.runtime.compute_process`) while the loop keeps the consumer in its group
(:mod:`worker.runtime.flow`);
every event ends in one finding or one dead letter, which the delivery
(:mod:`worker.runtime.delivery`) sends as soon as a chunk is computed and commits while the
next chunk computes (a poll's last chunk, after the next poll); the observer
(:mod:`worker.runtime.observer`) counts and logs them once committed. In-flight work is thus
bounded by ``max_poll_records`` plus one computed chunk (with a compute process, by two polls:
a full poll takes the next one while its last chunk computes, :meth:`Worker._handle`), and a
crash replays rather than loses events.

Shutdown: SIGTERM/SIGINT stop polling; the current batch is finished, produced and committed,
then the consumer leaves the group. ``drain=True`` exits once the whole group has committed
every partition to its end offset (burst mode).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any

from kafka import TopicPartition

from worker.contract import ScanEvent
from worker.errors import ModelError, Rejection
from worker.imaging import ImagingConfig
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.pipeline import Pipeline
from worker.runtime import kafka as kafka_clients
from worker.runtime.chunks import ChunkSizer
from worker.runtime.compute_process import ProcessPipeline
from worker.runtime.delivery import Delivery, Sending
from worker.runtime.flow import FlowControl, Rebalance
from worker.runtime.membership import STUCK_AFTER_S, MembershipWatchdog, replace_consumer
from worker.runtime.observer import Observer, RunStats
from worker.runtime.results import (
    EventResult,
    dead_letter_result,
    event_of,
    from_outcome,
    source_of,
)
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Polled:
    """One poll: its records, the flow's revocation mark when they came, when (wall clock, for
    the arrival and queue waits of :mod:`worker.metrics`) and, for a poll taken ahead, its
    chunks already in compute (futures and sizes)."""

    records: list[Any]
    mark: int
    polled_at: float
    queued: list[tuple[Future[list[EventResult]], int]] | None = None


class Worker:
    """One consumer in the group. ``run()`` blocks until stopped, drained or ``max_events``."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        models: ModelSet | None,
        metrics: Metrics,
        health: Health,
        imaging: ImagingConfig = ImagingConfig(),
        consumer: Any = None,
        producer: Any = None,
        pipeline: Pipeline | ProcessPipeline | None = None,
        consumer_factory: Callable[[], Any] | None = None,
    ) -> None:
        """``consumer``/``producer``/``pipeline`` default to the real ones; tests pass fakes.
        ``models`` may be None only with a ``pipeline`` or ``compute_process`` (the child loads
        its own).
        ``consumer_factory`` makes the consumer (and its replacement when one is stuck outside
        its group: :mod:`worker.runtime.membership`); a ``consumer`` given is never replaced."""
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self._stop = threading.Event()
        # One thread computes; with a compute process, two threads keep two chunks in the child,
        # which then goes from one to the next without waiting for this process's threads.
        self._compute_pool = ThreadPoolExecutor(
            2 if settings.compute_process else 1, thread_name_prefix="scanstream-compute"
        )
        self._sizer = ChunkSizer(settings.chunk_target_ms / 1e3)
        # Poll ahead only where it pays (_handle): compute in a child, results not transactional.
        self._look_ahead = settings.compute_process and settings.delivery != "exactly-once"
        # A computed chunk's results, sent and not yet finished, and the revocation mark of
        # their poll.
        self._held: tuple[Sending, int] | None = None
        # A chunk's findings are sent together, as soon as it is computed: lingering (the
        # factory's 2 ms) only held them back. Measured at half load: the produce stage (send
        # to acknowledged) 0.3 ms instead of 1.5; at saturation, 2% lower in the mean of four
        # interleaved rounds, well within their spread (README, benchmarks).
        extra: dict[str, Any] = {"linger_ms": 0}
        if settings.delivery == "exactly-once":
            # A stable worker id (e.g. the pod name) lets a restarted worker fence its crashed
            # predecessor and abort its open transaction at once, instead of read_committed
            # readers waiting for the transaction timeout.
            extra["transactional_id"] = f"scanstream-{settings.group_id}-{settings.worker_id}"
            extra["transaction_timeout_ms"] = 30000
        else:
            # send() blocks at most this long for metadata or buffer space: the loop must poll
            # again well within max_poll_interval_ms (a send that timed out is sent again).
            # Transactions keep the default: a slow commit must be retried, not abandoned.
            extra["max_block_ms"] = int(min(10_000, settings.max_poll_interval_ms / 4))
        self.producer = producer or kafka_clients.producer(bootstrap, settings, **extra)
        try:
            if settings.delivery == "exactly-once":
                self.producer.init_transactions()  # fails here without its ACL, for one
            if consumer is not None:
                consumer_factory = None  # the caller's consumer: never replaced
            else:
                consumer_factory = consumer_factory or (
                    lambda: kafka_clients.consumer(
                        bootstrap, settings, isolation_level="read_committed"
                    )
                )
                consumer = consumer_factory()
            self.consumer = consumer
        except BaseException:
            self.producer.close(timeout=0)  # a failed start leaves no client (and socket) open
            self._compute_pool.shutdown()
            raise
        self.observer = Observer(metrics, health)
        self.flow = FlowControl(self.consumer, health, settings.max_poll_interval_ms)
        self.delivery = Delivery(self.producer, self.consumer, settings, self.flow, self.observer)
        self._factory = consumer_factory
        self._watchdog = (
            MembershipWatchdog(settings.events_topic, STUCK_AFTER_S) if consumer_factory else None
        )
        try:
            self._subscribe()
            # Last: a compute process is started only for a worker that can otherwise run.
            self.pipeline: Pipeline | ProcessPipeline = pipeline or _pipeline_for(
                settings, models, imaging
            )
        except BaseException:  # e.g. not authorised to Describe the topic: close both clients
            self.consumer.close()
            self.producer.close(timeout=0)
            self._compute_pool.shutdown()
            raise

    def _subscribe(self) -> None:
        listener = Rebalance(self.flow, self.metrics, self.delivery.deferred_position)
        kafka_clients.subscribe(self.consumer, [self.settings.events_topic], listener)

    def _replace_stuck_consumer(self) -> None:
        """The consumer is stuck outside its group: close it (it leaves) and join afresh."""
        assert self._factory is not None and self._watchdog is not None
        fresh = replace_consumer(self.consumer, self._factory, self._watchdog, "worker")
        self.consumer = self.flow.consumer = self.delivery.consumer = fresh
        self._subscribe()

    @property
    def stats(self) -> RunStats:
        return self.observer.stats

    # -- control -----------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: draining and leaving the group", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, drain: bool = False, max_events: int | None = None) -> RunStats:
        try:
            ahead: Polled | None = None  # a poll taken while the last one's last chunk computed
            # A poll taken ahead has chunks in compute already: it is finished even when stopped.
            while ahead is not None or not self._stop.is_set():
                self.health.beat()
                polled, ahead = ahead or self._poll(), None
                if polled.records:
                    ahead = self._handle(polled)
                    if self._watchdog is not None:
                        self._watchdog.reset()
                else:
                    self._finish_held()  # nothing new came: what waits goes out now
                    self.delivery.commit_deferred()  # and is committed (commit_interval_ms)
                    if self._watchdog is not None and self._watchdog.stuck(self.consumer):
                        self._replace_stuck_consumer()
                    elif drain and self._caught_up():
                        break
                if ahead is None and max_events is not None and self.stats.consumed >= max_events:
                    break
            self._finish_held()
        finally:
            self.close()
        return self.stats

    def _poll(self) -> Polled:
        """One poll: its records, the flow's revocation mark when they came, and when (wall
        clock, for the arrival and queue waits of :mod:`worker.metrics`).

        Results held from the last chunk are already sent (their findings are on their way);
        they are finished (acknowledgements waited for, offsets committed) after the poll, while
        the next chunk computes. Exactly-once results are finished before it:
        read_committed readers see a finding only once its transaction commits.

        A revocation since the held chunk was polled may have reset a partition to its
        committed offset, so the poll could repeat that chunk's records: the poll is then
        undone (its partitions sought back to its first records) and the chunk finished, which
        positions partitions given back to us after it. (A poll with no wait would have made
        the overlap tighter. kafka-python 3.0 was seen to lose its group for good when a
        rebalance began inside ``poll(timeout_ms=0)``: the stranded join that
        :func:`~worker.runtime.membership.guard_join` now closes.)"""
        if self.delivery.transactional:
            self._finish_held()
        if self._held is None:
            self.flow.new_poll()
        batch = self.consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records
        )
        polled_at = time.time()
        self.health.set_ready(bool(self.consumer.assignment()))
        held = self._held
        if held is not None and self.flow.revoked_since(held[1]):
            for tp, polled in batch.items():
                self.consumer.seek(tp, min(r.offset for r in polled))
            self._finish_held()
            return Polled([], self.flow.mark(), polled_at)
        return Polled([r for recs in batch.values() for r in recs], self.flow.mark(), polled_at)

    def _poll_ahead(self, mark: int) -> Polled | None:
        """The next poll, taken while this poll's last chunk computes (see :meth:`_handle`), its
        chunks submitted at once; None when it brings nothing, or when partitions were revoked
        since this poll (``mark``): its records are then sought back and polled again after
        this poll's last chunk is delivered, as :meth:`_poll` would."""
        # The loop's own poll, timeout included: with a backlog, records are there already.
        # (The short poll this once took lost the group: the stranded join of _poll's
        # docstring.) So a backlog that ends just then holds its last chunk back by up to
        # poll_timeout_ms.
        batch = self.consumer.poll(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records
        )
        polled_at = time.time()
        if self.flow.revoked_since(mark):
            for tp, polled in batch.items():
                self.consumer.seek(tp, min(r.offset for r in polled))
            return None
        records = [r for recs in batch.values() for r in recs]
        if not records:
            return None
        queued = [(self._submit(c, polled_at), len(c)) for c in self._sizer.split(records)]
        return Polled(records, self.flow.mark(), polled_at, queued)

    def close(self) -> None:
        self.health.set_ready(False)
        self._compute_pool.shutdown(wait=True)
        if isinstance(self.pipeline, ProcessPipeline):
            self.pipeline.close()
        try:
            self.delivery.commit_pending()
            self.consumer.close()  # leaves the group, so partitions move on at once
        finally:
            self.producer.close(timeout=self.settings.grace_period_s)

    # -- the loop body -----------------------------------------------------------------------
    def _handle(self, polled: Polled) -> Polled | None:
        """The poll's records in chunks (:mod:`worker.runtime.chunks`), two stages deep: while
        one chunk computes on the compute thread (the next ones queued behind it), the results
        of the one before (sent as soon as they were computed) are finished here; the last
        chunk's results are finished after the next poll, with the compute of the chunk that
        poll brings.

        With a compute process, a full poll of more than one chunk (a backlog) takes the next
        poll while its last chunk computes (:meth:`_poll_ahead`) and returns it, its chunks
        already queued: else
        the child waits, between polls, for this thread to deliver that chunk and parse the
        next poll's records (measured: 15 to 35 ms every 64 records, 7% of the child's time).
        In-flight work is then up to two polls."""
        records, mark, polled_at = polled.records, polled.mark, polled.polled_at
        self.observer.polled(len(records))
        self.health.set_backlog(len(records))
        # Every chunk is queued for the compute thread at once, so that it goes from chunk to
        # chunk without waiting for this thread, which meanwhile waits for acknowledgements and
        # commits (measured: the compute thread idle a third of the time when each chunk was
        # submitted only after the one before was delivered). Chunks are still delivered one by
        # one, each as soon as it is computed.
        queued = polled.queued or [
            (self._submit(c, polled_at), len(c)) for c in self._sizer.split(records)
        ]
        ahead = None
        # A backlog: a full poll of more than one chunk. Not below saturation, where the poll
        # ahead would wait for the next event and hold the last chunk's findings back with it
        # (measured at half load: p99 up to 99 ms against 56 to 65 without).
        look_ahead = (
            self._look_ahead and len(queued) > 1 and len(records) >= self.settings.max_poll_records
        )
        for n, (work, _) in enumerate(queued):
            self._finish_held(in_flight=sum(size for _, size in queued[n:]))
            if look_ahead and n == len(queued) - 1 and not self._stop.is_set():
                ahead = self._poll_ahead(mark)
            self.flow.wait(work)
            self.flow.delivering(mark)
            self._held = (self.delivery.start(work.result()), mark)
        held = len(self._held[0].batch) if self._held is not None else 0
        self.observer.lag(self.consumer, _partitions(records), in_flight=held)
        return ahead

    def _finish_held(self, in_flight: int = 0) -> None:
        """Finish the held chunk's delivery, if any (``in_flight``: records of the chunk
        computing meanwhile, still waiting for health's sake)."""
        if self._held is None:
            return
        sending, mark = self._held
        self._held = None
        self.flow.delivering(mark)
        committed = self.delivery.finish(sending)
        self.flow.resume()
        self.observer.committed(committed)
        self.observer.lag(self.consumer, _partitions(r.record for r in committed), in_flight)

    def _submit(
        self, chunk: Sequence[Any], polled_at: float | None = None
    ) -> Future[list[EventResult]]:
        return self._compute_pool.submit(self._timed_compute, list(chunk), polled_at)

    def _timed_compute(
        self, records: list[Any], polled_at: float | None = None
    ) -> list[EventResult]:
        started_at = time.time()
        t0 = time.perf_counter()
        results = self.compute(records)
        seconds = time.perf_counter() - t0
        if isinstance(self.pipeline, ProcessPipeline):
            # The child's own time: the wall time here includes the other chunk's turn there.
            seconds = self.pipeline.compute_seconds() or seconds
        self._sizer.observe(len(records), seconds)
        if polled_at is None:
            return results
        return [dataclasses.replace(r, polled_at=polled_at, started_at=started_at) for r in results]

    def compute(self, records: list[Any]) -> list[EventResult]:
        """Records to results (runs on the compute thread; never touches the consumer)."""
        try:
            parsed = [event_of(r) for r in records]
            ok = [(r, p) for r, p in zip(records, parsed, strict=True) if isinstance(p, ScanEvent)]
            outcomes = iter(
                self.pipeline.process([p for _, p in ok], [source_of(r) for r, _ in ok])
            )
            return [
                from_outcome(r, next(outcomes), self.settings)
                if isinstance(p, ScanEvent)
                else dead_letter_result(r, p, self.settings)
                for r, p in zip(records, parsed, strict=True)
            ]
        except ModelError:
            # The models cannot run any more (a compute process that could not be started
            # again): stop, as a start would fail, rather than dead-letter every event after.
            raise
        except Exception as exc:  # a bug of ours: every record still gets its one result
            log.exception("internal error computing a batch of %d records", len(records))
            failed = Rejection("internal_error", repr(exc))
            return [dead_letter_result(r, failed, self.settings) for r in records]

    def commit_pending(self) -> None:
        self.delivery.commit_pending()

    def _caught_up(self) -> bool:
        """Drain is done when the whole group has committed every partition to its end."""
        self.delivery.commit_pending()  # our own asynchronous commits count only once confirmed
        return kafka_clients.group_caught_up(self.consumer, self.settings.events_topic)


def _pipeline_for(
    settings: Settings, models: ModelSet | None, imaging: ImagingConfig
) -> Pipeline | ProcessPipeline:
    """In a child process with ``compute_process`` (which loads its own models), else here."""
    if settings.compute_process:
        return ProcessPipeline(settings, imaging)
    if models is None:
        raise ValueError("a worker that computes in its own process needs its models")
    return Pipeline(models, settings, imaging)


def _partitions(records: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(r.topic, r.partition) for r in records}
