"""What one consumed event produces, as Kafka messages: a finding (plus its alerts) or a dead
letter that carries the original record. Pure functions of the record and the documents; the
loop sends them and counts them once their offsets are committed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from worker.contract import dead_letter_headers
from worker.errors import Rejection
from worker.pipeline import build_alerts
from worker.settings import Settings

Message = tuple[str, bytes | None, list[tuple[str, bytes]]]  # topic, value, headers
_JSON = [("content-type", b"application/json")]


@dataclass
class EventResult:
    """One event's messages, and what to count once they are committed."""

    record: ConsumerRecord
    messages: list[Message]
    finding: dict[str, Any] | None = None
    rejection: Rejection | None = None
    alert_severities: list[str] = field(default_factory=list)
    sent_at: float | None = None


def finding_result(
    record: ConsumerRecord, finding: dict[str, Any], settings: Settings
) -> EventResult:
    """The finding on the findings topic and one alert per rule it meets."""
    messages: list[Message] = [(settings.findings_topic, json.dumps(finding).encode(), _JSON)]
    alerts = build_alerts(finding, settings)
    messages += [(settings.alerts_topic, json.dumps(a).encode(), _JSON) for a in alerts]
    return EventResult(
        record,
        messages,
        finding=finding,
        alert_severities=[a["severity"] for a in alerts],
        sent_at=time.time() - finding["latency_ms"] / 1e3,
    )


def dead_letter_result(
    record: ConsumerRecord, rejection: Rejection, settings: Settings
) -> EventResult:
    """The original value and headers on the dead-letter topic, plus the error headers."""
    headers = dead_letter_headers(
        record.headers or [],
        rejection.reason,
        rejection.detail,
        record.topic,
        record.partition,
        record.offset,
        time.time(),
    )
    return EventResult(record, [(settings.dlq_topic, record.value, headers)], rejection=rejection)
