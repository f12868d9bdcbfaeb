"""Metrics, logs and run statistics, recorded in one place, once per committed result.

Nothing is counted before its results are acknowledged and its offsets handed to the commit
(which the commit interval may hold back a little: :mod:`worker.runtime.delivery`), so a batch
replayed by this worker is never counted twice, and nothing else in the runtime touches the
metrics for results: the delivery reports
produce and commit times and replays here, the loop reports polls and lag.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from worker.contract import EVENT_ID, header
from worker.metrics import STAGES, Health, Metrics
from worker.runtime import kafka as kafka_clients
from worker.runtime.jsonlog import log_event
from worker.runtime.results import EventResult

log = logging.getLogger("worker.runtime.loop")


@dataclass
class RunStats:
    consumed: int = 0
    findings: int = 0
    dead_letters: int = 0
    alerts: int = 0
    replays: int = 0
    srs_not_built: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Observer:
    """The one boundary where results become metrics, log lines and statistics."""

    def __init__(self, metrics: Metrics, health: Health) -> None:
        self.metrics, self.health = metrics, health
        self.stats = RunStats()

    def polled(self, records: int) -> None:
        self.stats.consumed += records
        self.metrics.observe_batch(records)
        self.metrics.set_in_flight(records)

    def delivered(self, produce_s: float, commit_s: float) -> None:
        self.metrics.observe_stage("produce", produce_s)
        self.metrics.observe_stage("commit", commit_s)

    def replay(self, cause: str, error: BaseException) -> None:
        self.stats.replays += 1
        self.metrics.count_replay(cause)
        self.health.note_problem(f"{cause}: {type(error).__name__}: {error}")

    def committed(self, results: list[EventResult]) -> None:
        """Count and log results whose offsets are committed."""
        now = time.time()
        self.metrics.set_in_flight(0)
        if results:
            self.health.progress()
        for result in results:
            if result.finding is not None:
                self._finding(result, now)
            elif result.rejection is not None:
                self._dead_letter(result)

    def _finding(self, result: EventResult, now: float) -> None:
        assert result.finding is not None
        timings = result.finding["timings_ms"]
        for stage, ms in timings.items():
            if stage in STAGES:
                self.metrics.observe_stage(stage, ms / 1e3)
        if result.sent_at is not None:
            self.metrics.observe_e2e(max(0.0, now - result.sent_at))
        if result.polled_at is not None:
            if result.sent_at is not None:
                self.metrics.observe_stage("arrival", max(0.0, result.polled_at - result.sent_at))
            if result.started_at is not None:
                self.metrics.observe_stage("queue", max(0.0, result.started_at - result.polled_at))
        self.stats.findings += 1
        self.metrics.count_event("finding")
        if result.sr_ms is not None:
            self.metrics.observe_stage("sr", result.sr_ms / 1e3)
            self.metrics.count_sr("not_built" if result.sr_error else "produced")
            if result.sr_error:
                self.stats.srs_not_built += 1
                log.warning(
                    "finding %s went without its SR: %s",
                    result.finding["finding_id"],
                    result.sr_error,
                )
        for classification in result.finding["classifications"]:
            if classification.get("in_domain") is False:
                for reason in classification.get("domain_reasons", []):
                    self.metrics.count_out_of_domain(classification["model"], reason)
        for severity in result.raised_alerts():
            self.metrics.count_alert(severity)
            self.stats.alerts += 1
        log_event(
            log,
            "finding",
            result.record,
            stage="finding",
            event_id=result.finding["event_id"],
            duration_ms=round(sum(timings.values()), 3),
        )

    def _dead_letter(self, result: EventResult) -> None:
        assert result.rejection is not None
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
        if reason == "internal_error":  # our bug: loud, with the detail
            log.error("internal error on offset %s: %s", result.record.offset, result.rejection)

    def lag(self, consumer: Any, partitions: set[TopicPartition], in_flight: int = 0) -> None:
        """Lag of the partitions just committed that are still ours; with ``in_flight`` (records
        polled and not yet committed), the backlog for health."""
        lags = kafka_clients.partition_lags(consumer, partitions)
        for tp, lag in lags.items():
            self.metrics.set_lag(tp.topic, tp.partition, lag)
        self.health.set_backlog(sum(lags.values()) + in_flight)
