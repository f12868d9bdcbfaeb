"""Which series are due for a summary, and which record offsets must stay uncommitted.

A series is due:

* **study complete**: the gateway's ``study-complete.v1`` record for its study has arrived and
  the series has a finding for every instance the record lists for it (the worker may lag
  behind the gateway, so the record often arrives before the last findings: the summary waits
  for them). A series of the study that the record does not list is summarised at once;
* **quiet**: otherwise, once no new finding of the series arrived for ``quiet_s`` (by the
  service's clock, on arrival: findings re-read after a restart count from then). A series
  whose listed instances never all arrive (some became dead letters) ends this way too.

A finding that arrives after its series' summary re-opens the series; its next summary carries
``revision`` one higher and everything so far. A finding that changes nothing (a redelivery)
re-opens nothing. A summarised series is forgotten ``forget_after_s`` (1 hour) after its last
finding, so that memory stays bounded; a finding after that starts it again at revision 1.

Offsets: every finding that is in no acknowledged summary yet, and every study-complete record
still waited on, *holds* its partition at its offset (:meth:`SeriesTracker.holds`); the service
commits each partition up to its lowest hold (or all it consumed, without one), so a restart
re-reads every finding whose summary was not produced.

>>> now = [0.0]
>>> t = SeriesTracker(quiet_s=30, clock=lambda: now[0], wall=lambda: 0.0)
>>> cls = {"model": "cnn", "label": "lesion", "probability": 0.5, "positive": True}
>>> f = {"study_instance_uid": "1.2", "series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.1",
...      "finding_id": "0" * 32, "produced_at": "2026-01-01T00:00:00Z", "modality": "CT",
...      "frame_count": 1, "classifications": [cls], "models": []}
>>> t.finding(f, "findings-0", 7), t.due(), t.holds()
(True, [], {'findings-0': 7})
>>> now[0] = 30.0
>>> [due] = t.due()
>>> due.document["trigger"], due.document["revision"]
('quiet', 1)
>>> t.summarised(due); t.holds()
{}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from worker.contract import rfc3339
from worker.series.summary import (
    NotSummarisable,
    SeriesAccumulator,
    Trigger,
    facts_of,
    series_key,
    summary_document,
)

FORGET_AFTER_S: Final = 3600.0
SeriesKey = tuple[str, str]  # (StudyInstanceUID, SeriesInstanceUID)


@dataclass(frozen=True)
class Due:
    """A summary to produce; hand it back to :meth:`SeriesTracker.summarised` once acked."""

    key: SeriesKey
    document: dict[str, Any]
    version: int  # the series' state the document was made of
    where: Hashable  # a partition the series' findings came from


@dataclass
class _Series:
    acc: SeriesAccumulator = field(default_factory=SeriesAccumulator)
    last_seen: float = 0.0
    revision: int = 0  # of the last acknowledged summary
    version: int = 0  # changes so far
    summarised_version: int = 0
    holds: dict[Hashable, int] = field(default_factory=dict)
    partitions: set[Hashable] = field(default_factory=set)
    expected: set[str] | None = None  # SOPInstanceUIDs the study-complete record lists
    expected_count: int | None = None
    complete_pending: bool = False  # a study-complete record waits for this series

    @property
    def dirty(self) -> bool:
        return self.version != self.summarised_version

    def covered(self) -> bool:
        return self.expected is None or self.expected <= self.acc.sop_instance_uids()


@dataclass
class _Study:
    expected: dict[str, set[str]]
    counts: dict[str, int]
    where: Hashable
    offset: int
    last_activity: float


def _expectation(record: Mapping[str, Any]) -> tuple[str, dict[str, set[str]], dict[str, int]]:
    """(study, SOP UIDs per series, instance count per series) of a study-complete record."""
    try:
        study = record["study_instance_uid"]
        expected: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        for item in record["series"]:
            counts[str(item["series_instance_uid"])] = int(item["instance_count"])
        for instance in record["instances"]:
            series, sop = str(instance["series_instance_uid"]), str(instance["sop_instance_uid"])
            if sop:  # an instance without its SOPInstanceUID has no finding to match
                expected.setdefault(series, set()).add(sop)
    except (KeyError, TypeError, ValueError) as exc:
        raise NotSummarisable(f"not a study-complete.v1 record ({type(exc).__name__})") from exc
    if not isinstance(study, str) or not study:
        raise NotSummarisable("the study-complete record lacks its StudyInstanceUID")
    counts.pop("", None)  # instances without a series cannot be summarised
    return study, {k: v for k, v in expected.items() if k}, counts


class SeriesTracker:
    """Series state in memory (see the module docstring). Not thread-safe: one loop owns it.

    ``clock`` measures the quiet period (monotonic); ``wall`` gives ``summarized_at``."""

    def __init__(
        self,
        quiet_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        forget_after_s: float = FORGET_AFTER_S,
    ) -> None:
        self.quiet_s, self.forget_after_s = quiet_s, forget_after_s
        self._clock, self._wall = clock, wall
        self._series: dict[SeriesKey, _Series] = {}
        self._studies: dict[str, _Study] = {}

    def finding(self, finding: Mapping[str, Any], where: Hashable, offset: int) -> bool:
        """One finding read at ``offset`` of partition ``where``; True if it changed its series.
        NotSummarisable when it has no study or series UID or is not a finding."""
        key = series_key(finding)
        facts = facts_of(finding)
        now = self._clock()
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(last_seen=now)
            study = self._studies.get(key[0])
            if study is not None and key[1] in study.counts:
                self._expect(series, study, key[1])
        series.partitions.add(where)
        if not series.acc.add(facts):
            return False
        series.version += 1
        series.holds[where] = min(series.holds.get(where, offset), offset)
        series.last_seen = now
        if key[0] in self._studies:
            self._studies[key[0]].last_activity = now
        return True

    def study_complete(self, record: Mapping[str, Any], where: Hashable, offset: int) -> None:
        """The gateway's record for a study: its series are summarised once they have a finding
        for every listed instance (those it does not list: at once). A newer record of the
        study replaces an older one. NotSummarisable if it is not shaped like one."""
        study_uid, expected, counts = _expectation(record)
        study = _Study(expected, counts, where, offset, self._clock())
        self._studies[study_uid] = study
        for (study_of, series_uid), series in self._series.items():
            if study_of != study_uid:
                continue
            if series_uid in counts:
                self._expect(series, study, series_uid)
            else:  # not listed: "every series of the study" is summarised now
                series.complete_pending = series.dirty

    @staticmethod
    def _expect(series: _Series, study: _Study, series_uid: str) -> None:
        series.expected = study.expected.get(series_uid, set())
        series.expected_count = study.counts[series_uid]
        # Already summarised with every listed instance: nothing new to say.
        series.complete_pending = series.dirty or not series.covered()

    def due(self) -> list[Due]:
        """The summaries to produce now (in a stable order); the forgotten are dropped."""
        now = self._clock()
        out: list[Due] = []
        for key, series in sorted(self._series.items()):
            if series.dirty:
                trigger: Trigger
                if series.complete_pending and series.covered():
                    trigger = "study_complete"
                elif now - series.last_seen >= self.quiet_s:
                    trigger = "quiet"
                else:
                    continue
                out.append(self._due(key, series, trigger))
            elif now - series.last_seen >= self.quiet_s + self.forget_after_s:
                del self._series[key]
        listed: dict[str, list[_Series]] = {uid: [] for uid in self._studies}
        for (study_uid, series_uid), series in self._series.items():
            if study_uid in listed and series_uid in self._studies[study_uid].counts:
                listed[study_uid].append(series)
        for uid, study in list(self._studies.items()):
            mine = listed[uid]
            waiting = len(mine) < len(study.counts) or any(s.complete_pending for s in mine)
            if not waiting:
                del self._studies[uid]
            elif now - study.last_activity >= self.quiet_s:
                # The rest never came (dead letters, say): the series end by quiet instead.
                for series in mine:
                    series.complete_pending = False
                del self._studies[uid]
        return out

    def _due(self, key: SeriesKey, series: _Series, trigger: Trigger) -> Due:
        document = summary_document(
            series.acc,
            key[0],
            key[1],
            trigger,
            series.revision + 1,
            rfc3339(self._wall()),
            self.quiet_s,
            series.expected_count,
        )
        return Due(key, document, series.version, min(series.partitions, key=repr))

    def summarised(self, due: Due) -> None:
        """``due``'s summary was acknowledged by the broker."""
        series = self._series.get(due.key)
        if series is None:
            return
        series.revision = max(series.revision, int(due.document["revision"]))
        if due.document["trigger"] == "study_complete":
            series.complete_pending = False
        if due.version == series.version:  # else it changed since: it stays open and held
            series.summarised_version = series.version
            series.holds.clear()

    def holds(self, assuming: Iterable[Due] = ()) -> dict[Hashable, int]:
        """Per partition, the lowest offset that must stay uncommitted; ``assuming`` those
        summaries acknowledged."""
        done = {(d.key, d.version) for d in assuming}
        out: dict[Hashable, int] = {}
        for key, series in self._series.items():
            if (key, series.version) in done:
                continue
            for where, offset in series.holds.items():
                out[where] = min(out.get(where, offset), offset)
        for study in self._studies.values():
            out[study.where] = min(out.get(study.where, study.offset), study.offset)
        return out

    def forget_partitions(self, gone: Iterable[Hashable]) -> None:
        """Partitions another member now owns: it re-reads them from their committed offsets,
        so their series (and study records) are dropped here."""
        gone = set(gone)
        if not gone:
            return
        for key in [k for k, s in self._series.items() if s.partitions & gone]:
            del self._series[key]
        for uid in [u for u, s in self._studies.items() if s.where in gone]:
            del self._studies[uid]

    def open_series(self) -> int:
        """Series with findings not yet in an acknowledged summary. Safe to call from another
        thread than the loop that owns the tracker (health checks, tests): it counts over a
        snapshot, as iterating the dict itself fails when that loop adds a series meanwhile."""
        return sum(1 for s in list(self._series.values()) if s.dirty)
