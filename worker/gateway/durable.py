"""Acknowledge only what is durable: one received instance becomes one scan event in Kafka.

:meth:`DurablePublisher.store` returns only once the broker has acknowledged the event
(``acks=all``, idempotent producer), and for an instance that travels by claim-check, once its
file is written, fsynced and renamed into place (and the folder fsynced). Anything short of that
raises :class:`NotDurable`, and the gateway answers the sender with a failure status, so the
sender keeps the instance and retries: an instance is never acknowledged and then lost.

The bytes are published as they came (preamble, file meta and dataset as the peer encoded them);
only the header is parsed, for the record key (StudyInstanceUID) and the study tracker.

* up to ``gateway_inline_max_bytes``: an inline event (``content-type: application/dicom``);
* above it, with ``SCANSTREAM_CLAIM_CHECK_DIR`` set: the file ``<sha256>.dcm`` in that folder and
  a reference event (``file://`` URI, size and sha256); the worker must be allowed to read the
  folder (``SCANSTREAM_REFERENCE_ALLOW``);
* above it without a claim-check folder: inline still, if within ``max_message_bytes``;
  otherwise :class:`NotDurable` (the sender is told "out of resources").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.contract import rfc3339
from worker.errors import ScanStreamError
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import InstanceHeader, event_headers
from worker.settings import Settings

log = logging.getLogger(__name__)


class NotDurable(ScanStreamError):
    """The instance could not be made durable in time; the sender must retry."""


@dataclass(frozen=True)
class Stored:
    event_id: str
    header: InstanceHeader
    claim_check: str | None  # the file, when the instance went by claim-check


class DurablePublisher:
    """One producer for the gateway's events and study records, waiting for every ack."""

    def __init__(self, settings: Settings, bootstrap: str, producer: Any = None) -> None:
        self.settings = settings
        timeout_ms = int(settings.gateway_ack_timeout_s * 1000)
        self.producer = producer or kafka_clients.producer(
            bootstrap,
            settings,
            max_block_ms=timeout_ms,  # metadata or buffer space: never longer than the deadline
            linger_ms=0,  # each C-STORE waits for its own ack: nothing to batch with
            request_timeout_ms=max(1000, timeout_ms),
            delivery_timeout_ms=max(1000, timeout_ms) + 2,  # kafka-python: > linger + request
        )

    def store(self, data: bytes, deadline: float | None = None) -> Stored:
        """Publish one instance; return once durable, or raise NotDurable (see the module)."""
        deadline = deadline or time.monotonic() + self.settings.gateway_ack_timeout_s
        header = InstanceHeader.read(data)
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        claim_check = None
        settings = self.settings
        if len(data) > settings.gateway_inline_max_bytes and settings.claim_check_dir:
            claim_check = write_durably(Path(settings.claim_check_dir), data)
            doc = {
                "uri": Path(claim_check).as_uri(),
                "event_id": event_id,
                "sent_at": rfc3339(sent_at),
                "size_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": "application/dicom",
            }
            if header.sop_uid:
                doc["sop_instance_uid"] = header.sop_uid
            value, ctype = json.dumps(doc).encode(), "application/json"
        elif len(data) > settings.max_message_bytes:
            raise NotDurable(
                f"an instance of {len(data)} B is above SCANSTREAM_MAX_MESSAGE_BYTES and no "
                "SCANSTREAM_CLAIM_CHECK_DIR is set"
            )
        else:
            value, ctype = data, "application/dicom"
        self.send(
            settings.events_topic,
            header.study_uid.encode() or None,
            value,
            event_headers(event_id, sent_at, ctype),
            deadline,
        )
        return Stored(event_id, header, claim_check)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        deadline: float,
    ) -> None:
        """One record, acknowledged by the broker before ``deadline``, else NotDurable."""
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
            future.get(timeout=max(0.001, deadline - time.monotonic()))
        except Exception as exc:
            raise NotDurable(
                f"the broker did not acknowledge in time ({type(exc).__name__})"
            ) from exc
        if not future.succeeded():
            raise NotDurable("the broker did not acknowledge in time")

    def close(self) -> None:
        self.producer.close(timeout=self.settings.grace_period_s)


def write_durably(folder: Path, data: bytes) -> str:
    """Write ``data`` as ``folder/<sha256>.dcm``: to a temporary file, fsync, rename, fsync the
    folder, so that the file is whole and on disk before any event points at it. The same
    bytes always get the same name (a resend overwrites it with itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{hashlib.sha256(data).hexdigest()}.dcm"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return str(target)
