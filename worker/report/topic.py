"""``scanstream report``: the last findings of the findings topic, as a report page.

Reads without a consumer group (nothing is committed, no other reader is disturbed): every
partition is assigned, each is read from its end minus ``count`` up to the end it had when the
read began, and of what came back the ``count`` most recent findings (by record timestamp) are
kept. Records that are not valid finding.v1 documents are skipped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from worker.contract import validation_errors
from worker.report.render import DEFAULT_TITLE
from worker.report.sources import entry_from_thumbnail_dir, write_report
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

log = logging.getLogger(__name__)


def parse_finding(value: bytes | None) -> dict[str, Any] | None:
    """The finding in a record's value, or None if it is not a valid finding.v1 document.

    >>> parse_finding(b"{}") is None, parse_finding(b"\\xff") is None, parse_finding(None)
    (True, True, None)
    """
    if value is None:
        return None
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or validation_errors("finding.v1", document):
        return None
    return document


def last_findings(
    bootstrap: str, settings: Settings, count: int, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """The ``count`` most recent valid findings of ``settings.findings_topic``, oldest first."""
    from kafka import TopicPartition

    topic = settings.findings_topic
    consumer = kafka_clients.consumer(bootstrap, settings, group_id=None)
    found: list[tuple[int, int, int, dict[str, Any]]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
        waiting = set()
        for tp in tps:
            start = max(starts[tp], ends[tp] - count)
            consumer.seek(tp, start)
            if start < ends[tp]:
                waiting.add(tp)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    finding = parse_finding(record.value) if record.offset < ends[tp] else None
                    if finding is not None:
                        found.append((record.timestamp, tp.partition, record.offset, finding))
            waiting = {tp for tp in waiting if consumer.position(tp) < ends[tp]}
        if waiting:
            log.warning("stopped reading %s after %.0f s before its end", topic, timeout_s)
    finally:
        consumer.close()
    found.sort(key=lambda item: item[:3])
    return [finding for *_, finding in found[-count:]]


def run_report(settings: Settings, count: int, out: str | Path, timeout_s: float = 15.0) -> Path:
    """Read the last ``count`` findings and write their page at ``out``; returns its path."""
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=False)
    findings = last_findings(bootstrap, settings, count, timeout_s)
    entries = [entry_from_thumbnail_dir(f, settings.thumbnail_dir) for f in findings]
    notes = [
        f"The last {len(findings)} finding{'s' if len(findings) != 1 else ''} of "
        f"{settings.findings_topic}; edge pictures are the worker's thumbnails, where "
        "SCANSTREAM_THUMBNAIL_DIR holds them."
    ]
    return write_report(entries, out, DEFAULT_TITLE, notes)
