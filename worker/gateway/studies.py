"""Study-complete records: after a quiet period, one record per study on ``scans.studies``.

DICOM has no "end of study" message, so the gateway infers it: a study that received no new
instance for ``SCANSTREAM_STUDY_QUIET_S`` (default 10 s) is announced with a ``study-complete.v1``
record, keyed by StudyInstanceUID, that lists its instances (SOPInstanceUID, series, SOP class
and the scan event's id) and counts per series. A study-level consumer starts from that record.

Late instances: an instance that arrives after its study was announced re-opens the study; after
another quiet period a new record is published with ``revision`` one higher, listing every
instance received so far (the earlier ones too), so the newest revision is always the whole
study as the gateway saw it. What the gateway has seen is kept in memory only: a restarted
gateway starts each study afresh (revision 1, listing what arrives after the restart), and a
study interrupted by a restart may be announced twice, each record partial. So does a study
whose late instance comes more than ``FORGET_AFTER_S`` (1 hour) after its announcement: the
gateway has forgotten it by then, so that memory stays bounded. Records are
published with the same acknowledge-or-retry rule as events: one that the broker did not
acknowledge is retried at the next tick.

>>> t = StudyTracker(quiet_s=5, clock=lambda: now)
>>> now = 0.0
>>> t.note("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "e1")
>>> t.due() == []
True
>>> now = 6.0
>>> [(r["study_instance_uid"], r["instance_count"], r["revision"]) for r in t.due()]
[('1.2', 1, 1)]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.contract import rfc3339

FORGET_AFTER_S = 3600.0


@dataclass
class _Study:
    instances: dict[str, dict[str, str]] = field(default_factory=dict)
    last_seen: float = 0.0
    first_seen_wall: float = 0.0
    announced_revision: int = 0
    dirty: bool = True


class StudyTracker:
    """Thread-safe record of instances per study, and which studies have gone quiet."""

    def __init__(self, quiet_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_s, self._clock = quiet_s, clock
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()

    def note(
        self, study_uid: str, series_uid: str, sop_uid: str, sop_class_uid: str, event_id: str
    ) -> None:
        """One durable instance (instances without a StudyInstanceUID are not tracked)."""
        if not study_uid:
            return
        with self._lock:
            study = self._studies.setdefault(study_uid, _Study(first_seen_wall=time.time()))
            study.instances[sop_uid or event_id] = {
                "sop_instance_uid": sop_uid,
                "series_instance_uid": series_uid,
                "sop_class_uid": sop_class_uid,
                "event_id": event_id,
            }
            study.last_seen, study.dirty = self._clock(), True

    def due(self) -> list[dict[str, Any]]:
        """The records of the studies quiet for ``quiet_s`` with something new to say. Call
        :meth:`announced` once a record is acknowledged, else it is offered again."""
        now = self._clock()
        out = []
        with self._lock:
            for uid, study in list(self._studies.items()):
                quiet = now - study.last_seen
                if study.dirty and quiet >= self.quiet_s:
                    out.append(self._record(uid, study))
                elif not study.dirty and quiet >= self.quiet_s + FORGET_AFTER_S:
                    del self._studies[uid]  # bounded memory; a later instance starts afresh
        return out

    def announced(self, record: dict[str, Any]) -> None:
        with self._lock:
            study = self._studies.get(record["study_instance_uid"])
            if study is not None and study.announced_revision < record["revision"]:
                study.announced_revision = record["revision"]
                # New instances after the record was made keep it dirty.
                study.dirty = len(study.instances) != record["instance_count"]

    def _record(self, uid: str, study: _Study) -> dict[str, Any]:
        instances = sorted(study.instances.values(), key=lambda i: i["sop_instance_uid"])
        series: dict[str, int] = {}
        for instance in instances:
            series[instance["series_instance_uid"]] = (
                series.get(instance["series_instance_uid"], 0) + 1
            )
        return {
            "study_instance_uid": uid,
            "revision": study.announced_revision + 1,
            "instance_count": len(instances),
            "series": [{"series_instance_uid": k, "instance_count": v} for k, v in series.items()],
            "instances": instances,
            "first_received_at": rfc3339(study.first_seen_wall),
            "completed_at": rfc3339(time.time()),
            "quiet_period_s": self.quiet_s,
        }
