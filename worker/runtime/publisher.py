"""Publish DICOM files as scan events: the scanner simulator and backfill tool.

Each file becomes one inline event (value = the file's bytes, ``content-type:
application/dicom``) or, with ``reference=True``, one claim-check event whose JSON value points
at the file (the worker reads it only if its ``SCANSTREAM_REFERENCE_ALLOW`` covers the file's
folder: :func:`reference_allow_line`). The key is the StudyInstanceUID (read without pixel
data) so that one study stays on one partition and in order; unreadable files are sent with no
key and will be dead-lettered.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

from worker.contract import rfc3339
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings


@dataclass(frozen=True)
class Published:
    event_id: str
    path: str
    sent_at: float


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and files under folders named, in sorted order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


@dataclass(frozen=True)
class InstanceHeader:
    """What the gateway needs from an instance's header (UIDs only: no patient data)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str

    @classmethod
    def read(cls, data: bytes) -> InstanceHeader:
        """The UIDs of a Part 10 stream ('' where absent or unreadable), without pixel data.

        >>> from worker.phantoms import ct_slice, encode_ct
        >>> InstanceHeader.read(encode_ct(ct_slice(1, 16), study="s")).sop_class_uid
        '1.2.840.10008.5.1.4.1.1.2'
        >>> InstanceHeader.read(b"not dicom").study_uid
        ''
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
                values = [
                    str(ds.get(name, "") or "")
                    for name in (
                        "StudyInstanceUID",
                        "SeriesInstanceUID",
                        "SOPInstanceUID",
                        "SOPClassUID",
                    )
                ]
        except Exception:  # noqa: BLE001 - published anyway; the worker dead-letters it
            values = ["", "", "", ""]
        return cls(*values)


def study_key(data: bytes) -> bytes | None:
    """The record key of an instance: its StudyInstanceUID, or None when it has none."""
    return InstanceHeader.read(data).study_uid.encode() or None


def event_headers(event_id: str, sent_at: float, content_type: str) -> list[tuple[str, bytes]]:
    return [
        ("content-type", content_type.encode()),
        ("event-id", event_id.encode()),
        ("sent-at", rfc3339(sent_at).encode()),
    ]


def publish_bytes(
    producer: object, settings: Settings, data: bytes, event_id: str | None = None
) -> Published:
    """Send one inline event through an existing producer (no flush)."""
    event_id = event_id or str(uuid.uuid4())
    sent_at = time.time()
    producer.send(  # type: ignore[attr-defined]
        settings.events_topic,
        key=study_key(data),
        value=data,
        headers=event_headers(event_id, sent_at, "application/dicom"),
    )
    return Published(event_id, "", sent_at)


def reference_allow_line(paths: Iterable[str | Path]) -> str:
    """The ``SCANSTREAM_REFERENCE_ALLOW`` line a worker needs to read these files' claim-check
    events: their folders, resolved as the events' URIs are (a folder inside another is left out).

    >>> reference_allow_line(["/no-such/a/x.dcm", "/no-such/a/b/y.dcm", "/no-such/c d/z.dcm"])
    'SCANSTREAM_REFERENCE_ALLOW=file:///no-such/a/,file:///no-such/c%20d/'
    """
    folders = sorted({Path(p).resolve().parent for p in paths})
    kept = [f for f in folders if not any(f != o and f.is_relative_to(o) for o in folders)]
    uris = [f.as_uri() if f.as_uri().endswith("/") else f.as_uri() + "/" for f in kept]
    return "SCANSTREAM_REFERENCE_ALLOW=" + ",".join(uris)


def publish_files(
    paths: Iterable[str | Path], bootstrap: str, settings: Settings, reference: bool = False
) -> list[Published]:
    producer = kafka_clients.producer(bootstrap, settings)
    out: list[Published] = []
    try:
        for path in iter_files(paths):
            data = path.read_bytes()
            event_id = str(uuid.uuid4())
            sent_at = time.time()
            if reference:
                doc = {
                    "uri": path.resolve().as_uri(),
                    "event_id": event_id,
                    "sent_at": rfc3339(sent_at),
                    "size_bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
                value, ctype = json.dumps(doc).encode(), "application/json"
            else:
                value, ctype = data, "application/dicom"
            producer.send(
                settings.events_topic,
                key=study_key(data),
                value=value,
                headers=event_headers(event_id, sent_at, ctype),
            )
            out.append(Published(event_id, str(path), sent_at))
        producer.flush()
    finally:
        producer.close()
    return out
