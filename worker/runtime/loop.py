"""The consumer loop: poll -> process -> produce -> commit, and nothing else.

Delivery: offsets are committed only after every finding, alert and dead letter produced for
them is acknowledged by the broker (``acks=all``, idempotent producer), so a crash at any point
replays events rather than losing them (at-least-once). In ``exactly-once`` mode the results and
the offsets are committed in one Kafka transaction, so a ``read_committed`` subscriber sees each
finding once.

Backpressure: each poll takes at most ``max_poll_records`` events, computed on one compute
thread, and no new poll returns records until they are produced and committed, so in-flight
work is bounded by ``max_poll_records``. While a batch is slow, all partitions are paused and the
loop keeps polling (which returns nothing), so a slow model never pushes the consumer past
``max_poll_interval_ms``; partitions resume when the batch is committed. Inference of all
frames of one poll is micro-batched across events (``batch_max_size``, ``batch_max_delay_ms``),
and the batcher is flushed once a poll's frames are all queued.

Shutdown: SIGTERM/SIGINT stop polling; the current batch is finished, produced and committed,
then the consumer leaves the group. ``drain=True`` exits once the whole group has committed
every partition to its end offset (burst mode).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.contract import EVENT_ID, header, parse_event
from worker.errors import Rejection, TransientError
from worker.imaging import ImagingConfig
from worker.inference import MicroBatcher, ModelSet, Prediction
from worker.metrics import Health, Metrics
from worker.pipeline import Prepared, build_finding, prepare
from worker.runtime import kafka as kafka_clients
from worker.runtime.jsonlog import log_event
from worker.runtime.results import EventResult, dead_letter_result, finding_result
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    consumed: int = 0
    findings: int = 0
    dead_letters: int = 0
    alerts: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class _Outcome:
    record: ConsumerRecord
    prepared: Prepared | None = None
    futures: list[Future[tuple[Prediction, dict[str, float]]]] = field(default_factory=list)
    rejection: Rejection | None = None


class Worker:
    """One consumer in the group. ``run()`` blocks until stopped, drained or ``max_events``."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        models: ModelSet,
        metrics: Metrics,
        health: Health,
        imaging: ImagingConfig = ImagingConfig(),
        consumer: Any = None,
        producer: Any = None,
    ) -> None:
        """``consumer``/``producer`` default to real Kafka clients; tests may pass fakes."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.models = models
        self.metrics = metrics
        self.health = health
        self.imaging = imaging
        self.stats = RunStats()
        self._stop = threading.Event()
        self._backoff = 0.0
        self._paused = False
        # Offsets committed asynchronously and not yet confirmed by a synchronous commit.
        self._uncertain: dict[TopicPartition, OffsetAndMetadata] = {}
        self._compute_pool = ThreadPoolExecutor(1, thread_name_prefix="scanstream-compute")
        self._transactional = settings.delivery == "exactly-once"
        extra: dict[str, Any] = {}
        if self._transactional:
            # A stable worker id (e.g. the pod name) lets a restarted worker fence its crashed
            # predecessor and abort its open transaction at once, instead of read_committed
            # readers waiting for the transaction timeout.
            extra["transactional_id"] = f"scanstream-{settings.group_id}-{settings.worker_id}"
            extra["transaction_timeout_ms"] = 30000
        self.producer = producer or kafka_clients.producer(bootstrap, settings, **extra)
        if self._transactional:
            self.producer.init_transactions()
        self.consumer = consumer or kafka_clients.consumer(
            bootstrap, settings, isolation_level="read_committed"
        )
        # Fetch the topic's metadata before joining: a group leader without it assigns nothing
        # (kafka-python logs "No partition metadata") and the group limps until a rejoin.
        self.consumer.partitions_for_topic(settings.events_topic)
        self.consumer.subscribe([settings.events_topic], listener=_Rebalance(self))
        self.batcher = MicroBatcher(
            models,
            settings.batch_max_size,
            settings.batch_max_delay_ms,
            on_batch=self._on_batch,
        )

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
            while not self._stop.is_set():
                self.health.beat()
                batch = self.consumer.poll(
                    timeout_ms=self.settings.poll_timeout_ms,
                    max_records=self.settings.max_poll_records,
                )
                self.health.set_ready(bool(self.consumer.assignment()))
                records = [r for recs in batch.values() for r in recs]
                if records:
                    self._process(records)
                elif drain and self._caught_up():
                    break
                if max_events is not None and self.stats.consumed >= max_events:
                    break
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self.health.set_ready(False)
        self._compute_pool.shutdown(wait=True)
        self.batcher.close()
        try:
            self.commit_pending()
            self.consumer.close()  # leaves the group, so partitions move on at once
        finally:
            self.producer.close(timeout=self.settings.grace_period_s)

    # -- the loop body -----------------------------------------------------------------------
    def _process(self, records: list[ConsumerRecord]) -> None:
        self.metrics.set_in_flight(len(records))
        work = self._compute_pool.submit(self._compute, records)
        self._wait_keeping_membership(work)
        self._finish(records, work.result())
        self.metrics.set_in_flight(0)

    def _compute(self, records: list[ConsumerRecord]) -> list[EventResult]:
        """The CPU/GPU work of a batch (runs on the compute thread; never touches the consumer)."""
        outcomes = [self._prepare(r) for r in records]
        self.batcher.flush()  # every frame of this poll is queued: no reason to wait longer
        return [self._result(outcome) for outcome in outcomes]

    def _wait_keeping_membership(self, work: Future[list[EventResult]]) -> None:
        """Backpressure without eviction: while a batch is slow, every partition is paused and
        the consumer keeps polling, so no records come in, yet the member stays in the group
        (``max_poll_interval_ms``) and rebalances are served."""
        # Heartbeats run on kafka-python's own thread; only the poll interval needs polls. So a
        # normal batch just runs (no pause, no extra poll that could delay its commit).
        patience_s = min(5.0, self.settings.max_poll_interval_ms / 4000)
        if wait([work], timeout=patience_s).done:
            return
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())
        try:
            while not work.done():
                self.health.beat()
                stray = self.consumer.poll(timeout_ms=20)
                for tp, recs in stray.items():  # cannot happen while paused; never drop them
                    self.consumer.seek(tp, min(r.offset for r in recs))
        finally:
            self._paused = False
            self.consumer.resume(*self.consumer.paused())

    def _finish(self, records: list[ConsumerRecord], results: list[EventResult]) -> None:
        """Produce a computed batch, commit it, and only then count it."""
        try:
            sends = self._produce(results)
            self._commit(records)
        except Exception as exc:  # noqa: BLE001 - any Kafka failure: replay, never lose
            self._rewind(records, exc)
            return
        now = time.time()
        for sent_at in sends:
            self.metrics.observe_e2e(max(0.0, now - sent_at))
        for result in results:
            self._count(result)
        self._update_lag(records)

    def _produce(self, results: list[EventResult]) -> list[float]:
        """Send every result and wait for the broker's acknowledgements (acks=all)."""
        if self._transactional:
            self.producer.begin_transaction()
        futures: list[Any] = []  # kafka.future.Future
        for result in results:
            for topic, value, headers in result.messages:
                futures.append(
                    self.producer.send(topic, key=result.record.key, value=value, headers=headers)
                )
        t0 = time.perf_counter()
        self.producer.flush()
        for future in futures:
            future.get(timeout=self.settings.grace_period_s)  # raises if the broker refused
        self.metrics.observe_stage("produce", time.perf_counter() - t0)
        return [r.sent_at for r in results if r.sent_at is not None]

    def _rewind(self, records: list[ConsumerRecord], exc: Exception) -> None:
        """Nothing of this batch is committed: seek back so the next poll replays it."""
        log.warning("produce/commit failed, replaying the batch: %r", exc)
        if self._transactional:
            with contextlib.suppress(Exception):
                self.producer.abort_transaction()
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        self._backoff = min(5.0, max(0.2, self._backoff * 2))
        time.sleep(random.uniform(0, self._backoff))

    def _prepare(self, record: ConsumerRecord) -> _Outcome:
        self.stats.consumed += 1
        outcome = _Outcome(record)
        default_id = f"{record.topic}-{record.partition}-{record.offset}"
        try:
            event = parse_event(
                record.value, record.headers or [], default_id, record.timestamp / 1e3
            )
            prepared = self._with_retries(event)
            for stage, ms in prepared.timings_ms.items():
                self.metrics.observe_stage(stage, ms / 1e3)
            outcome.prepared = prepared
            outcome.futures = [
                self.batcher.submit(prepared.cnn_inputs[i], prepared.features[i])
                for i in range(len(prepared.analyses))
            ]
        except Rejection as exc:
            outcome.rejection = exc
        except Exception as exc:
            log.exception("internal error on %s", default_id)
            outcome.rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}")
        return outcome

    def _with_retries(self, event: Any) -> Prepared:
        attempts = self.settings.fetch_attempts
        for attempt in range(1, attempts + 1):
            try:
                return prepare(event, self.settings, self.imaging)
            except TransientError as exc:
                if attempt == attempts:
                    raise Rejection(exc.reason, f"after {attempts} attempts: {exc.detail}") from exc
                # Exponential backoff with full jitter: retries of many workers spread out.
                time.sleep(random.uniform(0, min(5.0, 0.2 * 2**attempt)))
        raise AssertionError("unreachable")

    def _result(self, outcome: _Outcome) -> EventResult:
        record = outcome.record
        if outcome.prepared is not None and outcome.rejection is None:
            try:
                results = [f.result(timeout=60) for f in outcome.futures]
                predictions = [p for p, _ in results]
                timings = {k: sum(t.get(k, 0.0) for _, t in results) for k in ("cnn", "svm")}
                finding = build_finding(
                    outcome.prepared,
                    predictions,
                    timings,
                    self.models,
                    self.settings,
                    source={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                )
            except Exception as exc:
                log.exception("inference failed for offset %s", record.offset)
                outcome.rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}")
            else:
                return finding_result(record, finding, self.settings)
        assert outcome.rejection is not None
        return dead_letter_result(record, outcome.rejection, self.settings)

    def _count(self, result: EventResult) -> None:
        """Metrics and stats for a result whose offsets are committed (so never twice)."""
        if result.finding is not None:
            for stage in ("cnn", "svm"):
                if stage in result.finding["timings_ms"]:
                    self.metrics.observe_stage(stage, result.finding["timings_ms"][stage] / 1e3)
            self.stats.findings += 1
            self.metrics.count_event("finding")
            for severity in result.alert_severities:
                self.metrics.count_alert(severity)
                self.stats.alerts += 1
            log_event(
                log,
                "finding",
                result.record,
                stage="finding",
                event_id=result.finding["event_id"],
                duration_ms=round(sum(result.finding["timings_ms"].values()), 3),
            )
        elif result.rejection is not None:
            reason = result.rejection.reason
            self.stats.dead_letters += 1
            self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
            self.metrics.count_event("dead_letter", reason)
            raw_id = header(result.record.headers or [], EVENT_ID)
            log_event(
                log,
                "dead_letter",
                result.record,
                stage="dead_letter",
                reason=reason,
                event_id=raw_id.decode("utf-8", "replace") if raw_id else None,
            )

    def _commit(self, records: list[ConsumerRecord]) -> None:
        """Commit the offsets after ``records``, whose results the broker has acknowledged.

        At-least-once commits asynchronously: the results are already safe, so a lost commit
        costs at most a replay, and the next commit covers it. A synchronous commit (7 ms
        here) per poll would dominate latency at moderate load. Shutdown and drain make the
        pending commits durable with :meth:`commit_pending`.
        """
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        t0 = time.perf_counter()
        if self._transactional:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
            self.producer.commit_transaction()
        else:
            self.consumer.commit_async(offsets, callback=self._on_commit)
            self._uncertain.update(offsets)
        self.metrics.observe_stage("commit", time.perf_counter() - t0)
        self._backoff = 0.0

    def _on_commit(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):  # the next commit covers it, or a replay does
            log.warning("asynchronous commit failed: %r", response)

    def commit_pending(self) -> None:
        """Commit synchronously every offset committed asynchronously since the last call."""
        if not self._uncertain:
            return
        owned = self.consumer.assignment()
        offsets = {tp: om for tp, om in self._uncertain.items() if tp in owned}
        self._uncertain.clear()
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - the worst outcome is a replay
                log.warning("commit failed, the partitions' next owner replays: %r", exc)

    def _on_batch(self, size: int, timings: dict[str, float]) -> None:
        self.metrics.observe_batch(size)

    def _update_lag(self, records: list[ConsumerRecord]) -> None:
        for tp in {TopicPartition(r.topic, r.partition) for r in records}:
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.set_lag(
                    tp.topic, tp.partition, max(0, high - self.consumer.position(tp))
                )

    def _caught_up(self) -> bool:
        """Drain is done when the whole group has committed every partition to its end.

        Group-wide rather than per assignment: with several workers draining together, one
        that never got a partition (the others were faster) must still stop."""
        self.commit_pending()  # our own asynchronous commits count only once confirmed
        topic = self.settings.events_topic
        partitions = self.consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return False
        ends = self.consumer.end_offsets(tps)
        return all((self.consumer.committed(tp) or 0) >= ends[tp] for tp in tps)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps new partitions paused while a batch is still running, and readiness and lag
    metrics truthful."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Runs on kafka-python's network thread, where nothing may block (no commit). Every
        # finished batch's commit was sent already; a batch still running when its partitions go
        # fails to commit and is replayed by the next owner (at-least-once; in exactly-once
        # mode its transaction is aborted).
        self.worker.health.set_ready(False)
        for tp in revoked:  # a partition we no longer own must not report stale lag
            self.worker.metrics.remove_lag(tp.topic, tp.partition)

    def on_partitions_assigned(self, assigned: Any) -> None:
        if self.worker._paused and assigned:
            self.worker.consumer.pause(*assigned)  # still busy: take nothing new yet
        self.worker.health.set_ready(bool(assigned))
