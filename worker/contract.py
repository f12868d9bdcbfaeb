"""The public contract: event forms, headers, schema validation, ids and dead-letter headers.

Two event forms arrive on the events topic, both keyed by StudyInstanceUID:

* inline: the value is DICOM Part 10 bytes, header ``content-type: application/dicom``;
* reference (claim check): the value is JSON per ``schemas/scan-event.v1.json`` with a ``uri``,
  header ``content-type: application/json``.

Optional headers ``event-id`` and ``sent-at`` (RFC 3339) apply to both; without ``sent-at`` the
record timestamp counts as the send time. Without a content-type header, a value that starts
with ``{`` is taken as a reference and anything else as inline DICOM.

>>> ct = [("content-type", b"application/json")]
>>> ev = parse_event(b'{"uri": "file:///x.dcm"}', ct, "t-0-1", 0.0)
>>> ev.uri, ev.event_id
('file:///x.dcm', 't-0-1')
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from worker.errors import Rejection

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
Headers = Sequence[tuple[str, bytes]]

CONTENT_TYPE = "content-type"
EVENT_ID = "event-id"
SENT_AT = "sent-at"
DICOM_TYPE = "application/dicom"
JSON_TYPE = "application/json"
ERROR_PREFIX = "scanstream.error."


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``schemas/<name>.json`` (e.g. ``finding.v1``), with format checking."""
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validation_errors(name: str, document: Any) -> list[str]:
    """Every way ``document`` breaks schema ``name`` (empty when valid)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(name).iter_errors(document)
    ]


@dataclass(frozen=True)
class ScanEvent:
    """One event as the pipeline sees it: inline bytes or a URI to fetch."""

    event_id: str
    sent_at: float  # seconds since the epoch
    data: bytes | None = None
    uri: str | None = None
    expected_sha256: str | None = None


def header(headers: Headers, name: str) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def parse_time(text: str) -> float:
    """RFC 3339 to epoch seconds; raises ValueError."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("RFC 3339 time needs an offset or Z")
    return when.timestamp()


def rfc3339(epoch_s: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch_s, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_event(
    value: bytes | None, headers: Headers, default_id: str, record_time: float
) -> ScanEvent:
    """Turn a record's value and headers into a ScanEvent, or raise Rejection(schema_error)."""
    value = value or b""
    raw_type = header(headers, CONTENT_TYPE)
    ctype = raw_type.decode("utf-8", "replace").split(";")[0].strip().lower() if raw_type else None
    raw_id = header(headers, EVENT_ID)
    event_id = raw_id.decode("utf-8", "replace") if raw_id else default_id
    sent_at = record_time
    raw_sent = header(headers, SENT_AT)
    if raw_sent:
        try:
            sent_at = parse_time(raw_sent.decode("utf-8", "replace"))
        except ValueError as exc:
            raise Rejection("schema_error", f"sent-at header is not RFC 3339: {exc}") from exc
    is_json = ctype == JSON_TYPE or (ctype is None and value.lstrip()[:1] == b"{")
    if ctype not in (None, DICOM_TYPE, JSON_TYPE):
        raise Rejection(
            "schema_error", f"content-type {ctype!r} is neither {DICOM_TYPE} nor {JSON_TYPE}"
        )
    if not is_json:
        return ScanEvent(event_id, sent_at, data=value)
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise Rejection("schema_error", f"reference event is not JSON: {exc}") from exc
    errors = validation_errors("scan-event.v1", doc)
    if errors:
        raise Rejection("schema_error", "scan-event.v1: " + "; ".join(errors[:3]))
    if "sent_at" in doc and not raw_sent:
        sent_at = parse_time(doc["sent_at"])
    return ScanEvent(
        event_id=str(doc.get("event_id") or event_id),
        sent_at=sent_at,
        uri=str(doc["uri"]),
        expected_sha256=doc.get("sha256"),
    )


def finding_id(sop_uid: str, model_versions: Sequence[tuple[str, str]]) -> str:
    """Deterministic: the same instance analysed by the same models gives the same id.

    >>> finding_id("1.2.3", [("cnn", "1.0.0")]) == finding_id("1.2.3", [("cnn", "1.0.0")])
    True
    """
    basis = sop_uid + "|" + ",".join(f"{n}:{v}" for n, v in sorted(model_versions))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def alert_id(finding: str, label: str, threshold: float, modality: str | None) -> str:
    basis = f"{finding}|{label}|{threshold:.6f}|{modality or '*'}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def patient_key(patient_id: str | None, secret: str) -> str | None:
    """HMAC-SHA256 pseudonym of the PatientID; None without a secret or an ID.

    >>> len(patient_key("12345", "k") or "")
    64
    >>> patient_key("12345", "") is None
    True
    """
    if not secret or not patient_id:
        return None
    return hmac.new(secret.encode(), patient_id.encode(), hashlib.sha256).hexdigest()


def dead_letter_headers(
    original: Headers, reason: str, detail: str, topic: str, partition: int, offset: int, at: float
) -> list[tuple[str, bytes]]:
    """Kafka Connect-style dead-letter headers: the originals untouched, then ours."""
    ours = {
        "reason": reason,
        "detail": " ".join(detail.split())[:500],
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "at": rfc3339(at),
    }
    kept = [(k, v) for k, v in original if not k.startswith(ERROR_PREFIX)]
    return kept + [(ERROR_PREFIX + k, v.encode()) for k, v in ours.items()]


def decode_headers(headers: Headers) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers}
