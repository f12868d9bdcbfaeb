"""The exporter's loop: poll -> send each SR -> dead-letter what was refused -> commit.

One consumer group per destination (:func:`export_group`), so each destination has its own
offsets: a PACS that is down holds back its own exporter and nothing else (the worker, and the
exporters to other destinations, go on). Records are sent one at a time, in order:

* :class:`~worker.export.Sent`: done;
* :class:`~worker.export.Rejected`: a dead letter ``export_rejected`` with the status (the
  original key, value and headers kept, on the dead-letter topic), and the next record goes on;
* :class:`~worker.export.Failed`: sent again after a backoff (exponential, with jitter), at most
  ``export_max_attempts`` times in all for this record, then a dead letter ``export_failed``;
* :class:`~worker.export.Unreachable`: the destination is away. The exporter probes it again
  with a backoff growing to ``export_backoff_max_s``, without limit and without charging the
  record; meanwhile ``/healthz`` says so (200, with the reason: a restart would not bring the
  destination back), ``/readyz`` is 503 and ``scanstream_export_destination_up`` is 0.

While it waits it stays in its group (paused partitions, polls: :mod:`worker.runtime.flow`).
A batch's dead letters are produced and its offsets committed by the worker's own
:class:`~worker.runtime.delivery.Delivery` only after every record of it ended, so delivery is
at least once: after a crash, SRs already sent are sent again, with the same SOP Instance UID
(derived from the finding id, :func:`worker.sr.sop_instance_uid_for`), which a PACS keeps once.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import Any

from kafka import TopicPartition

from worker.errors import Rejection
from worker.export import Destination, Failed, Rejected, SendResult, Sent, Unreachable
from worker.export.metrics import ExportMetrics
from worker.metrics import Health, Metrics
from worker.runtime import kafka as kafka_clients
from worker.runtime.delivery import Delivery
from worker.runtime.flow import FlowControl, Rebalance
from worker.runtime.membership import STUCK_AFTER_S, MembershipWatchdog, replace_consumer
from worker.runtime.observer import Observer
from worker.runtime.results import EventResult, dead_letter_result
from worker.settings import Settings

log = logging.getLogger(__name__)
BATCH_MAX: int = 16  # SRs per poll: a crash re-sends at most this many per partition
_KINDS: dict[type, str] = {
    Sent: "sent",
    Rejected: "rejected",
    Failed: "failed",
    Unreachable: "unreachable",
}


def export_group(settings: Settings, destination: str) -> str:
    """``SCANSTREAM_EXPORT_GROUP_ID``, else one group per destination, named after it.

    >>> export_group(Settings(), "dicom://PACS@10.0.0.5:104")
    'scanstream-export-dicom-PACS-10.0.0.5-104'
    """
    if settings.export_group_id:
        return settings.export_group_id
    return "scanstream-export-" + re.sub(r"[^A-Za-z0-9._]+", "-", destination).strip("-")


class _Abandoned(Exception):
    """The record's partition went to another member, or the exporter is stopping."""


class Exporter:
    """One consumer of the SR topic, sending to one destination. ``run()`` blocks."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        destination: Destination,
        metrics: ExportMetrics,
        health: Health,
        consumer: Any = None,
        producer: Any = None,
    ) -> None:
        """``consumer``/``producer`` default to real ones; tests pass fakes."""
        if not settings.sr_topic:
            raise ValueError("the exporter needs settings.sr_topic")
        self.settings, self.destination = settings, destination
        self.metrics, self.health = metrics, health
        self.topic = settings.sr_topic
        self._stop = threading.Event()
        self.backoff_first_s = 0.5
        self.producer = producer or kafka_clients.producer(
            bootstrap, settings, max_block_ms=int(min(10_000, settings.max_poll_interval_ms / 4))
        )

        def make_consumer() -> Any:
            return kafka_clients.consumer(
                bootstrap,
                settings,
                group_id=export_group(settings, destination.name),
                isolation_level="read_committed",  # an SR of an aborted transaction is not sent
                max_poll_records=min(BATCH_MAX, settings.max_poll_records),
            )

        self._factory = None if consumer is not None else make_consumer
        self._watchdog = (
            None if consumer is not None else MembershipWatchdog(self.topic, STUCK_AFTER_S)
        )
        self.consumer = consumer or make_consumer()
        self.flow = FlowControl(self.consumer, health, settings.max_poll_interval_ms)
        # The worker's delivery produces the dead letters and commits; its observer's metrics
        # are the worker's and stay unserved here (they would count SR records as "events").
        observer = Observer(Metrics(), health)
        self.delivery = Delivery(self.producer, self.consumer, settings, self.flow, observer)
        self.stats = observer.stats
        self.sent = 0
        self._subscribe()

    def _subscribe(self) -> None:
        kafka_clients.subscribe(self.consumer, [self.topic], Rebalance(self.flow, self.metrics))

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self, drain: bool = False) -> None:
        """Until stopped (or, with ``drain``, until the group committed the whole topic)."""
        try:
            while not self._stop.is_set():
                self.health.beat()
                self.flow.new_poll()
                batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                self.health.set_ready(bool(self.consumer.assignment()))
                records = [r for recs in batch.values() for r in recs]
                if records:
                    self._handle(records)
                    if self._watchdog is not None:
                        self._watchdog.reset()
                elif drain and self._caught_up():
                    break
                elif self._watchdog is not None and self._watchdog.stuck(self.consumer):
                    assert self._factory is not None
                    fresh = replace_consumer(
                        self.consumer, self._factory, self._watchdog, "exporter"
                    )
                    self.consumer = self.flow.consumer = self.delivery.consumer = fresh
                    self._subscribe()
        finally:
            self.close()

    def close(self) -> None:
        self.health.set_ready(False)
        try:
            self.delivery.commit_pending()
            self.consumer.close()
        finally:
            self.producer.close(timeout=self.settings.grace_period_s)

    # -- one batch ---------------------------------------------------------------------------
    def _handle(self, records: list[Any]) -> None:
        self.stats.consumed += len(records)
        results: list[EventResult] = []
        for record in records:
            if self._stop.is_set():
                break  # what is left is not committed: sent on the next start
            if TopicPartition(record.topic, record.partition) not in self.consumer.assignment():
                continue  # revoked while an earlier record waited: its next owner sends it
            try:
                rejection = self._export(record)
            except _Abandoned:
                continue
            if rejection is None:
                results.append(EventResult(record, ()))
            else:
                results.append(dead_letter_result(record, rejection, self.settings))
        committed = self.delivery.deliver(results)
        self.flow.resume()
        self.delivery.observer.committed(committed)  # logs each dead letter once
        for result in committed:
            if result.rejection is not None:
                self.metrics.dead_letter(result.rejection.reason)
            else:
                self.sent += 1
        self._lag({TopicPartition(r.topic, r.partition) for r in records})

    def _export(self, record: Any) -> Rejection | None:
        """Send one SR until it is stored, refused for good, or out of attempts."""
        name = self.destination.name
        attempts, delay, down_since = 0, 0.0, 0.0
        while True:
            t0 = time.perf_counter()
            result: SendResult = self.destination.send(record.value or b"")
            self.metrics.attempt(_KINDS[type(result)], time.perf_counter() - t0)
            if not isinstance(result, Unreachable) and down_since:
                log.info("export destination %s answers again", name)
                self.health.set_waiting_on("")
                down_since, delay = 0.0, 0.0
            if isinstance(result, Sent):
                return None
            if isinstance(result, Rejected):
                detail = f"{name} refused the SR (status {result.status:#06x}): {result.detail}"
                return Rejection("export_rejected", detail)
            if isinstance(result, Failed):
                attempts += 1
                if attempts >= self.settings.export_max_attempts:
                    return Rejection(
                        "export_failed",
                        f"{name} failed the SR {attempts} times in a row: {result.detail}",
                    )
                log.warning("export to %s failed (attempt %d): %s", name, attempts, result.detail)
            else:  # Unreachable: the destination's state, not the record's
                if not down_since:
                    down_since = time.time()
                    log.warning("export destination %s unreachable: %s", name, result.detail)
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(down_since))
                self.health.set_waiting_on(
                    f"export destination {name} unreachable since {since}: {result.detail}"
                )
            delay = min(self.settings.export_backoff_max_s, max(self.backoff_first_s, delay * 2))
            self._wait(record, random.uniform(0.5, 1.0) * delay)

    def _wait(self, record: Any, seconds: float) -> None:
        """Back off in the group; give the record up if its partition goes or we stop."""
        deadline = time.monotonic() + seconds
        tp = TopicPartition(record.topic, record.partition)
        while (left := deadline - time.monotonic()) > 0:
            self.flow.idle(min(left, 0.5))
            if self._stop.is_set() or tp not in self.consumer.assignment():
                raise _Abandoned

    def _lag(self, partitions: set[TopicPartition]) -> None:
        lags = kafka_clients.partition_lags(self.consumer, partitions)
        for tp, lag in lags.items():
            self.metrics.set_lag(tp.topic, tp.partition, lag)
        self.health.set_backlog(sum(lags.values()))

    def _caught_up(self) -> bool:
        self.delivery.commit_pending()
        return kafka_clients.group_caught_up(self.consumer, self.topic)
