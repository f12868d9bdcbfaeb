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
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

from worker.errors import Rejection

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
# kafka-python hands a null header value over as None; duplicates and any bytes are possible.
Headers = Sequence[tuple[str, bytes | None]]

CONTENT_TYPE = "content-type"
EVENT_ID = "event-id"
SENT_AT = "sent-at"
DICOM_TYPE = "application/dicom"
JSON_TYPE = "application/json"
ERROR_PREFIX = "scanstream.error."


@cache
def validator(name: str) -> Any:
    """A compiled validator for ``schemas/<name>.json`` (e.g. ``finding.v1``), formats checked.

    jsonschema-rs, because every finding, alert and dead letter is checked before it is
    produced: about 0.01 ms per finding where the pure-Python jsonschema takes 1.6 ms (measured
    on a 512x512 CT finding). The tests check the schemas with the Python implementation, so two
    independent validators agree on them.
    """
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


def validation_errors(name: str, document: Any) -> list[str]:
    """Every way ``document`` breaks schema ``name`` (empty when valid).

    >>> validation_errors("scan-event.v1", {"uri": "file:///x.dcm"})
    []
    >>> validation_errors("scan-event.v1", {})
    ['<root>: "uri" is a required property']
    """
    check = validator(name)
    if check.is_valid(document):
        return []
    return [
        f"{'/'.join(map(str, e.instance_path)) or '<root>'}: {e.message}"
        for e in check.iter_errors(document)
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
    """RFC 3339 to epoch seconds (``t`` and ``z`` may be lower case, as RFC 3339 allows);
    raises ValueError for anything else.

    >>> parse_time("2026-01-01t00:00:00z") == parse_time("2026-01-01T00:00:00Z")
    True
    """
    try:
        when = dt.datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("RFC 3339 time needs an offset or Z")
        return when.timestamp()
    except (OverflowError, OSError) as exc:  # a year beyond what the platform's clock holds
        raise ValueError(f"time out of range: {exc}") from exc


def rfc3339(epoch_s: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch_s, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_event(
    value: bytes | None, headers: Headers, default_id: str, record_time: float
) -> ScanEvent:
    """Turn a record's value and headers into a ScanEvent, or raise Rejection(schema_error).

    A null value (a tombstone) is no event. Header values that are null or not UTF-8 never
    raise: a null optional header counts as absent.
    """
    if value is None:
        raise Rejection("schema_error", "the record has a null value (a tombstone), not an event")
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
        try:
            sent_at = parse_time(doc["sent_at"])
        except ValueError as exc:
            raise Rejection("schema_error", f"sent_at is not RFC 3339: {exc}") from exc
    _check_uri(str(doc["uri"]))
    return ScanEvent(
        event_id=str(doc.get("event_id") or event_id),
        sent_at=sent_at,
        uri=str(doc["uri"]),
        expected_sha256=doc.get("sha256"),
    )


def _check_uri(uri: str) -> None:
    """A reference URI must at least parse (the fetcher refuses what it cannot read)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise Rejection("schema_error", f"uri is not a valid URI: {exc}") from exc
    if not parts.scheme:
        raise Rejection("schema_error", "uri has no scheme")


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
) -> list[tuple[str, bytes | None]]:
    """Kafka Connect-style dead-letter headers: the originals exactly as they came (order,
    duplicates, null values and all), then ours. Readers take the last ``scanstream.error.*``
    header of each name: an original one can only be an older dead letter's.

    >>> hs = dead_letter_headers([("x", None), ("x", b"\\xff")], "timeout", "d", "t", 0, 5, 0.0)
    >>> hs[:2], hs[2]
    ([('x', None), ('x', b'\\xff')], ('scanstream.error.reason', b'timeout'))
    """
    ours = {
        "reason": reason,
        "detail": " ".join(detail.split())[:500],
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "at": rfc3339(at),
    }
    return list(original) + [(ERROR_PREFIX + k, v.encode()) for k, v in ours.items()]


def decode_headers(headers: Headers) -> dict[str, str | None]:
    """Headers as the dead-letter schema describes them: the last value of each name, decoded
    as UTF-8 with invalid bytes replaced; a null value stays None."""
    return {k: None if v is None else v.decode("utf-8", "replace") for k, v in headers}
