"""What one consumed event produces, as Kafka messages: a finding (plus its alerts) or a dead
letter that carries the original record. Pure functions of the record and the documents; the
delivery sends them and the observer counts them once their offsets are committed.

The first message of a result is its primary one (the finding or the dead letter); with
``SCANSTREAM_SR_TOPIC`` set, the finding's DICOM SR follows it as a second essential message
(``essential``: refused for good, it turns the event into a dead letter like a refused finding);
alerts follow. The SR record has the event's key, ``content-type: application/dicom`` and the
``event-id`` and ``finding-id`` headers; its value is the SR's Part 10 file.

A dead letter keeps the original key, value and headers exactly, nulls included, and
adds the ``scanstream.error.*`` headers. When the broker refuses a result for good, it becomes
a dead letter (``result_refused``); when it refuses that dead letter too (larger than the
dead-letter topic allows), :func:`reduced_dead_letter` drops what it must, first the value, then
the key and original headers, and says so in ``scanstream.error.dropped``: the original stays
on the events topic at the partition and offset the error headers name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from kafka import TopicPartition

from worker.contract import (
    CONTENT_TYPE,
    DICOM_TYPE,
    EVENT_ID,
    ScanEvent,
    dead_letter_headers,
    decode_headers,
    parse_event,
    validation_errors,
)
from worker.errors import Rejection
from worker.pipeline import Outcome
from worker.runtime.kafka import NULL
from worker.settings import Settings

log = logging.getLogger(__name__)
HeaderList = list[tuple[str, bytes | None]]
Message = tuple[str, Any, HeaderList]  # topic, value (bytes or NULL), headers
_JSON: HeaderList = [("content-type", b"application/json")]
DROPPED = "scanstream.error.dropped"
FINDING_ID = "finding-id"


@dataclass(frozen=True)
class EventResult:
    """One event's messages, and what to count once they are committed."""

    record: Any  # kafka ConsumerRecord (or a test's stand-in)
    # The finding or dead letter first, then one per alert (None: an alert given up).
    messages: tuple[Message | None, ...]
    finding: dict[str, Any] | None = None
    rejection: Rejection | None = None
    alert_severities: tuple[str, ...] = ()
    sent_at: float | None = None
    essential: int = 1  # messages[:essential] stand or fall together (finding and its SR)
    sr_ms: float | None = None  # time spent building the SR, when one was asked for
    sr_error: str | None = None  # why the finding has no SR, when one was asked for
    reduced: int = field(default=0, compare=False)  # how much of the original was dropped
    # Wall-clock times (time.time()) the poll returned the record and its chunk's compute began.
    polled_at: float | None = field(default=None, compare=False)
    started_at: float | None = field(default=None, compare=False)

    def live_messages(self) -> list[int]:
        """Indices of the messages still to deliver."""
        return [i for i, m in enumerate(self.messages) if m is not None]

    def raised_alerts(self) -> list[str]:
        """Severities of the alerts that are delivered with this result."""
        alerts = self.messages[self.essential :]
        return [s for s, m in zip(self.alert_severities, alerts, strict=False) if m]

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)

    @property
    def key(self) -> bytes | None:
        return None if self.reduced >= 2 else self.record.key


def event_of(record: Any) -> ScanEvent | Rejection:
    """A consumed record as the pipeline's event, or why it is none (``schema_error``)."""
    default_id = f"{record.topic}-{record.partition}-{record.offset}"
    try:
        return parse_event(record.value, record.headers or [], default_id, record.timestamp / 1e3)
    except Rejection as exc:
        return exc


def source_of(record: Any) -> dict[str, Any]:
    """Where a finding's event came from (its ``source``)."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def from_outcome(record: Any, outcome: Outcome, settings: Settings) -> EventResult:
    if outcome.finding is not None:
        result = finding_result(record, outcome.finding, list(outcome.alerts), settings)
        if settings.sr_topic:
            result = with_sr(result, outcome.sr, settings.sr_topic)
            result = replace(result, sr_ms=outcome.sr_ms, sr_error=outcome.sr_error)
        return result
    assert outcome.rejection is not None
    return dead_letter_result(record, outcome.rejection, settings)


def finding_result(
    record: Any, finding: dict[str, Any], alerts: list[dict[str, Any]], settings: Settings
) -> EventResult:
    """The finding on the findings topic and one alert per rule it met."""
    messages: list[Message] = [(settings.findings_topic, json.dumps(finding).encode(), _JSON)]
    messages += [(settings.alerts_topic, json.dumps(a).encode(), _JSON) for a in alerts]
    return EventResult(
        record,
        tuple(messages),
        finding=finding,
        alert_severities=tuple(a["severity"] for a in alerts),
        sent_at=time.time() - finding["latency_ms"] / 1e3,
    )


def with_sr(result: EventResult, sr: bytes | None, topic: str) -> EventResult:
    """``result`` with the SR as its second essential message (nothing added without one)."""
    if sr is None or result.finding is None:
        return result
    headers: HeaderList = [
        (CONTENT_TYPE, DICOM_TYPE.encode()),
        (EVENT_ID, str(result.finding["event_id"]).encode()),
        (FINDING_ID, str(result.finding["finding_id"]).encode()),
    ]
    first, *alerts = result.messages
    return replace(result, messages=(first, (topic, sr, headers), *alerts), essential=2)


def dead_letter_result(record: Any, rejection: Rejection, settings: Settings) -> EventResult:
    """The original value and headers on the dead-letter topic, plus the error headers."""
    headers = _error_headers(record, rejection)
    value = NULL if record.value is None else record.value
    return EventResult(record, ((settings.dlq_topic, value, headers),), rejection=rejection)


def refused_result(result: EventResult, error: BaseException, settings: Settings) -> EventResult:
    """The broker refused ``result``'s finding for good: the event becomes a dead letter."""
    rejection = Rejection(
        "result_refused", f"the broker refused the finding: {type(error).__name__}: {error}"
    )
    return dead_letter_result(result.record, rejection, settings)


def reduced_dead_letter(
    result: EventResult, error: BaseException, settings: Settings
) -> EventResult | None:
    """The dead letter, with less of the original each time the broker refuses it; None once
    only the error headers are left (nothing more can be dropped)."""
    if result.reduced >= 2 or result.rejection is None:
        return None
    level = result.reduced + 1
    record = result.record
    size = len(record.value or b"")
    digest = hashlib.sha256(record.value or b"").hexdigest()
    dropped = "value" if level == 1 else "value,key,headers"
    detail = (
        f"{result.rejection.detail} | dead letter refused ({type(error).__name__}); "
        f"dropped {dropped} (value {size} bytes, sha256 {digest})"
    )
    headers = _error_headers(record, Rejection(result.rejection.reason, detail))
    if level == 2:
        headers = [(k, v) for k, v in headers if k.startswith("scanstream.error.")]
    headers.append((DROPPED, dropped.encode()))
    log.error("dead letter for offset %s refused, %s dropped", record.offset, dropped)
    return replace(result, messages=((settings.dlq_topic, NULL, headers),), reduced=level)


def without_alert(result: EventResult, message: int) -> EventResult:
    """``result`` with alert message ``message`` given up (positions kept)."""
    messages = tuple(None if i == message else m for i, m in enumerate(result.messages))
    return replace(result, messages=messages)


def _error_headers(record: Any, rejection: Rejection) -> HeaderList:
    headers = dead_letter_headers(
        record.headers or [],
        rejection.reason,
        rejection.detail,
        record.topic,
        record.partition,
        record.offset,
        time.time(),
    )
    errors = validation_errors("dead-letter.v1", decode_headers(headers))
    if errors:  # built here from fixed parts: only a bug of ours can get here
        log.error("dead letter breaks dead-letter.v1 (sent all the same): %s", errors[:3])
    return headers
