"""One series' findings, accumulated, and its ``series-summary.v1`` document. Pure: no Kafka,
no clock (the caller passes the times), no I/O.

A finding (``finding.v1``) describes one instance. Per model it carries one classification,
that of the instance's *deciding frame*: the most probable frame among those in the model's
declared input domain, or among all frames when none is; whether that frame is in the domain
(``in_domain``: true or false; null, or absent from an older worker, when the card declares no
domain: "undeclared"); and how many of the instance's frames are outside the domain
(``frames_out_of_domain``). Every frame of an instance goes through every model.

Per model and label, over the series:

* frames: analysed (every frame of the instances the model classified), in domain, out of
  domain, undeclared (the last three add up to the first);
* the largest and the mean probability and the positives over the instances whose deciding
  frame is in domain (``instances_in_domain`` of them). Since that frame is the most probable
  in-domain frame of its instance, the maximum is the maximum over every in-domain frame of the
  series; the mean is over one frame per instance, which is every in-domain frame in a series of
  single-frame instances (a finding carries no other frame's probability per model). A
  probability the model gave outside what it learned from says nothing, so it never enters
  them: out-of-domain and undeclared frames are counted only. With no instance in domain, the
  probabilities are null.

Deterministic and independent of arrival order: an instance counts once, by SOPInstanceUID (a
redelivered finding changes nothing; of two findings of one instance, say after a model upgrade,
the one produced later counts, ties going to the larger ``finding_id``); sums are exact
(``math.fsum``) and lists sorted.

>>> acc = SeriesAccumulator()
>>> def finding(sop, p, in_domain):
...     cls = {"model": "cnn", "label": "lesion", "probability": p, "positive": p >= 0.5,
...            "in_domain": in_domain}
...     return {"finding_id": sop.replace(".", "").ljust(32, "0"), "sop_instance_uid": sop,
...             "modality": "CT", "frame_count": 1, "produced_at": "2026-01-01T00:00:0" + sop[-1]
...             + "Z", "classifications": [cls], "models": []}
>>> acc.add(finding("1.2.1", 0.25, True)), acc.add(finding("1.2.2", 0.75, True))
(True, True)
>>> acc.add(finding("1.2.3", 0.99, False)), acc.add(finding("1.2.1", 0.25, True))
(True, False)
>>> doc = summary_document(acc, "1.2", "1.2.9", "quiet", 1, "2026-01-01T00:01:00Z", 30.0)
>>> [doc["models"][0][k] for k in ("frames_analysed", "frames_out_of_domain", "max_probability")]
[3, 1, 0.75]
>>> doc["models"][0]["mean_probability"], doc["instance_count"]
(0.5, 3)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from worker.contract import parse_time

SCHEMA: Final = "scanstream.series-summary.v1"
Trigger = Literal["study_complete", "quiet"]
TRIGGERS: Final = ("study_complete", "quiet")


class NotSummarisable(ValueError):
    """A finding a summary cannot use (no study or series UID, or not shaped like finding.v1)."""


@dataclass(frozen=True)
class Classified:
    """One model's classification of one instance, as far as a summary needs it."""

    model: str
    label: str
    probability: float  # of the deciding frame
    positive: bool
    in_domain: bool | None  # of the deciding frame; None: the model declares no domain
    frames: int  # the instance's frames, all classified by the model
    frames_out_of_domain: int


@dataclass(frozen=True)
class InstanceFacts:
    """What a summary keeps of one finding (a few numbers, never patient data)."""

    sop_instance_uid: str
    finding_id: str
    produced_at: str  # RFC 3339, as the finding says
    produced_s: float  # the same, in seconds since the epoch
    modality: str
    frame_count: int
    classifications: tuple[Classified, ...]
    model_versions: tuple[tuple[str, str], ...]  # (name, version), sorted

    def rank(self) -> tuple[float, str]:
        """Of two findings of one instance, the larger rank counts."""
        return (self.produced_s, self.finding_id)


def series_key(finding: Mapping[str, Any]) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a finding; NotSummarisable without both.

    >>> series_key({"study_instance_uid": "1.2", "series_instance_uid": "1.2.3"})
    ('1.2', '1.2.3')
    """
    study, series = finding.get("study_instance_uid"), finding.get("series_instance_uid")
    if not (isinstance(study, str) and study and isinstance(series, str) and series):
        raise NotSummarisable("the finding lacks its study or series UID")
    return study, series


def _in_domain(value: Any) -> bool | None:
    # Coded defensively: a finding without the key (an older worker) is "undeclared".
    return value if isinstance(value, bool) else None


def _classified(c: Mapping[str, Any], frames: int) -> Classified:
    in_domain = _in_domain(c.get("in_domain"))
    outside = c.get("frames_out_of_domain")
    if in_domain is None:
        out = 0
    elif isinstance(outside, int) and not isinstance(outside, bool):
        out = min(max(outside, 0), frames)
    else:  # without the count: an out-of-domain deciding frame means no frame was in domain
        out = frames if in_domain is False else 0
    return Classified(
        model=str(c["model"]),
        label=str(c["label"]),
        probability=float(c["probability"]),
        positive=bool(c["positive"]),
        in_domain=in_domain,
        frames=frames,
        frames_out_of_domain=out,
    )


def facts_of(finding: Mapping[str, Any]) -> InstanceFacts:
    """The facts of one finding.v1 document; NotSummarisable if it is not shaped like one."""
    try:
        frames = int(finding["frame_count"])
        classifications = tuple(_classified(c, frames) for c in finding["classifications"])
        versions = tuple(sorted({(str(m["name"]), str(m["version"])) for m in finding["models"]}))
        facts = InstanceFacts(
            sop_instance_uid=str(finding["sop_instance_uid"]),
            finding_id=str(finding["finding_id"]),
            produced_at=str(finding["produced_at"]),
            produced_s=parse_time(str(finding["produced_at"])),
            modality=str(finding["modality"]),
            frame_count=frames,
            classifications=classifications,
            model_versions=versions,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The type only: a message could quote a value of the record.
        raise NotSummarisable(f"not a finding.v1 document ({type(exc).__name__})") from exc
    if frames < 1 or not all(0.0 <= c.probability <= 1.0 for c in classifications):
        raise NotSummarisable("a frame count below 1 or a probability outside [0, 1]")
    return facts


class SeriesAccumulator:
    """The instances of one series, each counted once (see the module docstring)."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceFacts] = {}

    def add(self, finding: Mapping[str, Any] | InstanceFacts) -> bool:
        """Take one finding; True if it changed the summary (False: a duplicate or an older
        finding of an instance already counted). NotSummarisable if it is unusable."""
        facts = finding if isinstance(finding, InstanceFacts) else facts_of(finding)
        current = self._instances.get(facts.sop_instance_uid)
        if current is not None and current.rank() >= facts.rank():
            return False
        self._instances[facts.sop_instance_uid] = facts
        return True

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    def sop_instance_uids(self) -> set[str]:
        return set(self._instances)

    def instances(self) -> list[InstanceFacts]:
        """The counted instances, sorted by SOPInstanceUID."""
        return [self._instances[k] for k in sorted(self._instances)]


def _model_entry(
    model: str, label: str, items: list[Classified], versions: set[str]
) -> dict[str, Any]:
    inside = [c for c in items if c.in_domain is True]
    probabilities = [c.probability for c in inside]
    declared = [c for c in items if c.in_domain is not None]
    outside = sum(c.frames_out_of_domain for c in declared)
    return {
        "model": model,
        "label": label,
        "versions": sorted(versions),
        "frames_analysed": sum(c.frames for c in items),
        "frames_in_domain": sum(c.frames for c in declared) - outside,
        "frames_out_of_domain": outside,
        "frames_undeclared": sum(c.frames for c in items if c.in_domain is None),
        "instances_in_domain": len(inside),
        "max_probability": max(probabilities) if probabilities else None,
        "mean_probability": math.fsum(probabilities) / len(probabilities)
        if probabilities
        else None,
        "positive_in_domain": sum(1 for c in inside if c.positive),
    }


def summary_id(study_uid: str, series_uid: str, finding_ids: Iterable[str]) -> str:
    """32 hex digits naming the series and the set of findings summarised: the same findings
    give the same id (a summary produced again after a restart), a new finding a new one."""
    basis = f"{study_uid}|{series_uid}|" + ",".join(sorted(finding_ids))
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def summary_document(
    acc: SeriesAccumulator,
    study_uid: str,
    series_uid: str,
    trigger: Trigger,
    revision: int,
    summarized_at: str,
    quiet_period_s: float,
    instances_expected: int | None = None,
) -> dict[str, Any]:
    """The ``series-summary.v1`` document of ``acc`` (which must hold at least one instance).

    ``instances_expected``: how many instances the gateway's study-complete record lists for
    the series (None without one)."""
    instances = acc.instances()
    if not instances:
        raise ValueError("a series summary needs at least one finding")
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}")
    grouped: dict[tuple[str, str], list[Classified]] = {}
    versions: dict[str, set[str]] = {}
    for instance in instances:
        for c in instance.classifications:
            grouped.setdefault((c.model, c.label), []).append(c)
        for name, version in instance.model_versions:
            versions.setdefault(name, set()).add(version)
    times = [i.produced_at for i in sorted(instances, key=lambda i: (i.produced_s, i.produced_at))]
    return {
        "schema": SCHEMA,
        "summary_id": summary_id(study_uid, series_uid, (i.finding_id for i in instances)),
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "revision": revision,
        "trigger": trigger,
        "instance_count": len(instances),
        "instances_expected": instances_expected,
        "frames_decoded": sum(i.frame_count for i in instances),
        "modalities": sorted({i.modality for i in instances}),
        "models": [
            _model_entry(model, label, items, versions.get(model, set()))
            for (model, label), items in sorted(grouped.items())
        ],
        "first_finding_at": times[0],
        "last_finding_at": times[-1],
        "summarized_at": summarized_at,
        "quiet_period_s": quiet_period_s,
    }
