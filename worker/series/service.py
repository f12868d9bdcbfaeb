"""``scanstream summarize``: findings (and the gateway's study-complete records) in, one
``series-summary.v1`` record per series out, on ``SCANSTREAM_SERIES_TOPIC``.

One consumer group, ``{group_id}-series``, reads the findings topic and the studies topic
(``read_committed``: findings of an aborted exactly-once transaction never count); the
:class:`~worker.series.tracker.SeriesTracker` decides when each series is due (its study
complete, or quiet for ``SCANSTREAM_SERIES_QUIET_S``). Each summary is checked against its
schema, produced keyed by StudyInstanceUID and, once the broker acknowledged it, its offsets
are committed, by the worker's own :class:`~worker.runtime.delivery.Delivery` (at least once,
retried without limit while the consumer stays in its group: :mod:`worker.runtime.flow`).

**State is in memory; offsets are what makes a restart safe.** Each partition is committed
only up to its lowest *held* offset: that of the first finding not yet in an acknowledged
summary, or of a study-complete record still waited on (all consumed records, without one).
Offsets only move forward. So after a crash or a restart, every finding whose series had not
been summarised is read again and its series rebuilt and summarised; nothing is lost. What a
restart costs: series summarised in the meantime whose findings lie after the lowest hold are
summarised again (the same ``summary_id`` when the findings are the same), with ``revision``
starting again at 1, like the gateway's records; and a series re-opened by a late finding after
a restart is summarised from what was re-read (its earlier findings were covered by the
summary already produced). SIGTERM: the current delivery finishes, open series stay held and
are summarised by the next start.

Several summarizers may share the group if the findings and studies topics are co-partitioned
(the same partition count; both are keyed by StudyInstanceUID): the range assignor, used here,
then gives partition *n* of both topics to the same member, so a study's findings and its
study-complete record meet. A record that is neither a finding nor a study-complete record is
skipped (logged with its coordinates, never its content) and committed past.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kafka import TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor

from worker import __version__
from worker.contract import validation_errors
from worker.metrics import Health, Metrics
from worker.runtime import kafka as kafka_clients
from worker.runtime.delivery import Delivery
from worker.runtime.flow import FlowControl, Rebalance
from worker.runtime.membership import STUCK_AFTER_S, MembershipWatchdog, replace_consumer
from worker.runtime.observer import Observer
from worker.runtime.results import EventResult, HeaderList
from worker.series.summary import NotSummarisable
from worker.series.tracker import Due, SeriesTracker
from worker.settings import Settings

log = logging.getLogger(__name__)
SCHEMA_NAME = "series-summary.v1"
FINDING_SCHEMA = "scanstream.finding.v1"
_HEADERS: HeaderList = [("content-type", b"application/json"), ("schema", SCHEMA_NAME.encode())]


def series_group(settings: Settings) -> str:
    """The summarizer's consumer group.

    >>> series_group(Settings())
    'scanstream-series'
    """
    return f"{settings.group_id}-series"


@dataclass(frozen=True)
class _Anchor:
    """A stand-in record for the delivery: the partition to commit, ``offset`` + 1 being the
    offset committed, and the key of the message (StudyInstanceUID)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Summarizer:
    """One member of the summarizer group. ``run()`` blocks until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        health: Health | None = None,
        consumer: Any = None,
        producer: Any = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``consumer``/``producer`` default to real ones and ``clock`` to the monotonic one;
        tests pass their own."""
        self.settings = settings.replace(delivery="at-least-once")  # summaries: no transaction
        self.health = health or Health(stall_timeout_s=settings.stall_timeout_s)
        self.topics = (settings.findings_topic, settings.studies_topic)
        self.tracker = (
            SeriesTracker(settings.series_quiet_s)
            if clock is None
            else SeriesTracker(settings.series_quiet_s, clock=clock)
        )
        self._stop = threading.Event()
        self.producer = producer or kafka_clients.producer(
            bootstrap, settings, max_block_ms=int(min(10_000, settings.max_poll_interval_ms / 4))
        )

        def make_consumer() -> Any:
            return kafka_clients.consumer(
                bootstrap,
                settings,
                group_id=series_group(settings),
                isolation_level="read_committed",
                partition_assignment_strategy=(RangePartitionAssignor,),
            )

        self._factory = None if consumer is not None else make_consumer
        self._watchdog = (
            None
            if consumer is not None
            else MembershipWatchdog(settings.findings_topic, STUCK_AFTER_S)
        )
        try:
            self.consumer = consumer or make_consumer()
        except BaseException:
            self.producer.close(timeout=0)
            raise
        self.metrics = Metrics()  # the delivery's and rebalance's; not served
        self.flow = FlowControl(self.consumer, self.health, settings.max_poll_interval_ms)
        observer = Observer(self.metrics, self.health)
        # A commit for every delivery: the service commits only up to what it has summarised,
        # at the pace of its summaries, and positions nothing after a rebalance by itself.
        self.delivery = Delivery(
            self.producer, self.consumer, self.settings, self.flow, observer, commit_interval_s=0
        )
        self._consumed: dict[TopicPartition, int] = {}  # next offset after what was applied
        self._committed: dict[TopicPartition, int] = {}
        self.produced = 0
        self.skipped = 0
        self._subscribe()

    def _subscribe(self) -> None:
        kafka_clients.subscribe(self.consumer, self.topics, Rebalance(self.flow, self.metrics))

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.health.beat()
                self._forget_gone()
                self.flow.new_poll()
                batch = self.consumer.poll(
                    timeout_ms=self.settings.poll_timeout_ms,
                    max_records=self.settings.max_poll_records,
                )
                self.health.set_ready(bool(self.consumer.assignment()))
                self._forget_gone()
                records = [r for recs in batch.values() for r in recs]
                for record in records:
                    self._apply(record)
                self._deliver_due()
                watchdog = self._watchdog
                if records and watchdog is not None:
                    watchdog.reset()
                elif watchdog is not None and watchdog.stuck(self.consumer):
                    self._replace_consumer()
        finally:
            self.close()

    def close(self) -> None:
        self.health.set_ready(False)
        try:
            self.delivery.commit_pending()
            self.consumer.close()
        finally:
            self.producer.close(timeout=self.settings.grace_period_s)

    def _replace_consumer(self) -> None:
        assert self._watchdog is not None and self._factory is not None
        fresh = replace_consumer(self.consumer, self._factory, self._watchdog, "summarizer")
        self.consumer = self.flow.consumer = self.delivery.consumer = fresh
        self._subscribe()

    def _forget_gone(self) -> None:
        """Partitions revoked and not assigned back: their next owner rebuilds them."""
        gone = self.flow.revoked - self.consumer.assignment()
        if gone:
            self.tracker.forget_partitions(gone)
            for tp in gone:
                self._consumed.pop(tp, None)
                self._committed.pop(tp, None)

    # -- records in ---------------------------------------------------------------------------
    def _apply(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._consumed[tp] = max(self._consumed.get(tp, 0), record.offset + 1)
        try:
            document = json.loads(record.value) if record.value is not None else None
            if not isinstance(document, dict):
                raise NotSummarisable("not a JSON object")
            if record.topic == self.settings.findings_topic:
                if document.get("schema") != FINDING_SCHEMA:
                    raise NotSummarisable(f"not a {FINDING_SCHEMA} document")
                self.tracker.finding(document, tp, record.offset)
            else:
                if validation_errors("study-complete.v1", document):
                    raise NotSummarisable("not a study-complete.v1 record")
                self.tracker.study_complete(document, tp, record.offset)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError: deep nesting.
        except (ValueError, RecursionError, NotSummarisable) as exc:
            self.skipped += 1
            reason = str(exc) if isinstance(exc, NotSummarisable) else type(exc).__name__
            where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            log.info("record skipped", extra={"fields": {**where, "reason": reason}})

    # -- summaries out ------------------------------------------------------------------------
    def _deliver_due(self) -> None:
        dues = [d for d in self.tracker.due() if self._checked(d)]
        holds = self.tracker.holds(assuming=dues)
        marks = {tp: min(n, holds.get(tp, n)) for tp, n in self._consumed.items()}
        commits = [
            EventResult(_Anchor(tp.topic, tp.partition, mark - 1), ())
            for tp, mark in marks.items()
            if mark > self._committed.get(tp, 0)
        ]
        summaries: list[tuple[EventResult, Due]] = []
        for due in dues:
            where = due.where
            if where not in marks:  # not ours any more (cannot happen: forgotten when gone)
                continue
            value = json.dumps(due.document).encode()
            assert isinstance(where, TopicPartition)
            anchor = _Anchor(where.topic, where.partition, marks[where] - 1, due.key[0].encode())
            message = (self.settings.series_topic, value, list(_HEADERS))
            summaries.append((EventResult(anchor, (message,)), due))
        if not commits and not summaries:
            return
        done = self.delivery.deliver([*commits, *(r for r, _ in summaries)])
        self.flow.resume()
        self.delivery.observer.committed(done)
        delivered = {id(r) for r in done}
        for result in done:
            tp = result.tp
            self._committed[tp] = max(self._committed.get(tp, 0), result.record.offset + 1)
        for result, due in summaries:
            if id(result) in delivered:
                self.tracker.summarised(due)
                self.produced += 1
                self._log(due.document)

    def _checked(self, due: Due) -> bool:
        errors = validation_errors(SCHEMA_NAME, due.document)
        if not errors:
            return True
        # Only a bug of ours gets here: never produce it, and do not hold the series forever.
        log.error("internal error: a series summary breaks %s: %s", SCHEMA_NAME, errors[:3])
        self.tracker.summarised(due)
        return False

    @staticmethod
    def _log(doc: dict[str, Any]) -> None:
        """One line per summary: UIDs and counts, no patient data."""
        keys = ("study_instance_uid", "series_instance_uid", "revision", "trigger")
        fields = {k: doc[k] for k in (*keys, "instance_count", "summary_id")}
        log.info("series summary", extra={"fields": fields})


def run_summarize(settings: Settings) -> int:
    """Run the summarizer until SIGTERM/SIGINT."""
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=True)
    kafka_clients.wait_for_broker(bootstrap, settings)
    kafka_clients.ensure_topics(
        bootstrap,
        settings,
        only=(settings.findings_topic, settings.studies_topic, settings.series_topic),
    )
    summarizer = Summarizer(settings, bootstrap)

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current delivery and leaving the group", signum)
        summarizer.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info(
        "summarizer started",
        extra={
            "fields": {
                "version": __version__,
                "bootstrap": bootstrap,
                "topics": list(summarizer.topics),
                "out": settings.series_topic,
                "group": series_group(settings),
                "quiet_s": settings.series_quiet_s,
            }
        },
    )
    summarizer.run()
    log.info(
        "summarizer stopped",
        extra={"fields": {"summaries": summarizer.produced, "skipped": summarizer.skipped}},
    )
    return 0
