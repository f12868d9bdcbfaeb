"""Reference (claim-check) events for the end-to-end bench: the workload as files and JSON.

The inline phases measure the worker on DICOM bytes that travel through the broker. Reference
events (:mod:`worker.contract`) carry a JSON document instead, whose ``uri`` points at the file;
the worker reads it (:func:`worker.fetch.fetch`) only under its ``SCANSTREAM_REFERENCE_ALLOW``
policy (:mod:`worker.references`). :func:`write_references` writes the workload once to a folder
and returns the same events in reference form plus the environment that allows the folder, so
that a phase measures what the claim check costs end to end: a small record through the broker,
then the policy check, the file read and the sha256 check in the worker.

Each document holds ``uri``, ``size_bytes`` and ``sha256`` as ``scanstream publish --reference``
sends them (the worker checks the sha256 against what it reads), and ``content_type``, but no
``event_id`` or ``sent_at``: one document is sent many times, the bench's publisher gives every
send ``event-id`` and ``sent-at`` headers of its own, and a document's ``event_id`` would override
the header, so that every send of one file would answer under one id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from worker.bench.loadgen import Event
from worker.contract import DICOM_TYPE, JSON_TYPE
from worker.runtime.publisher import reference_allow_line


def reference_document(path: Path, data: bytes) -> bytes:
    """The scan-event.v1 document (JSON bytes) that points at ``path``, which holds ``data``."""
    doc = {
        "uri": path.resolve().as_uri(),
        "content_type": DICOM_TYPE,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return json.dumps(doc).encode()


def write_references(events: Sequence[Event], folder: Path) -> tuple[list[Event], dict[str, str]]:
    """Write each event's DICOM bytes under ``folder``; return the events in reference form (same
    names, keys and frame counts, in the same order) and the worker environment that allows them
    (``{"SCANSTREAM_REFERENCE_ALLOW": "file:///.../"}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out, paths = [], []
    for i, event in enumerate(events):
        path = folder / f"{i:03d}-{Path(event.name).stem}.dcm"
        path.write_bytes(event.data)
        paths.append(path)
        doc = reference_document(path, event.data)
        out.append(Event(event.name, doc, event.key, event.frames, JSON_TYPE))
    name, _, value = reference_allow_line(paths).partition("=")
    return out, {name: value}
