"""The data path of one event as plain functions, and their one composition.

Nothing here knows about Kafka. :func:`prepare` does the per-event CPU work (fetch for reference
events, decode, and image analysis of every frame) and raises
:class:`~worker.errors.Rejection` for anything that cannot become a finding. :class:`Pipeline`
composes the stages for a list of events (a poll's worth, or one file): it prepares each event
under its time budget, runs inference over all their frames at once in chunks of
``batch_max_size``, builds each finding and its alerts (:mod:`worker.findings`) and checks them
against their schemas; with ``sr_topic`` set, it also builds each finding's DICOM SR
(:mod:`worker.sr`) from the instance, here, where the patient's dataset is in hand. An SR that
cannot be built (the source lacks its study or series UIDs) does not hold the finding back: the
finding goes out without it, and the reason is logged and counted. The worker, ``scanstream
analyze`` and the benchmark all use it, so what is measured and tested offline is what runs.

Every event ends in one :class:`Outcome`: a finding (with alerts) or a rejection with its reason.
Errors from bad input are turned into their reasons where they arise (decode, fetch, imaging
limits); an exception that still escapes a stage is our own bug and becomes ``internal_error``,
logged with its traceback.

The per-event time budget (``event_timeout_s``) starts when the event's preparation starts. It
bounds the fetch (each attempt's deadline is at most what is left) and is checked between
stages and between frames, so an event ends at most one stage of one frame past its budget; the
size limits (``max_pixels``, ``max_frames``, ``max_message_bytes``) bound that one stage.

>>> from worker.phantoms import ct_slice, encode_ct
>>> from worker.contract import ScanEvent
>>> from worker.inference import ModelSet
>>> [outcome] = Pipeline(ModelSet.load(), Settings()).process(
...     [ScanEvent("e1", 0.0, data=encode_ct(ct_slice(1, 64)))])
>>> outcome.finding["frame_count"], outcome.finding["modality"], outcome.rejection
(1, 'CT', None)
>>> Pipeline(ModelSet.load(), Settings()).process([ScanEvent("e2", 0.0, data=b"x")])[0].reason
'not_dicom'
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.contract import ScanEvent, validation_errors
from worker.dicom import InstanceMeta, Limits, decode
from worker.errors import Rejection, TransientError
from worker.evidence import Evidence, gather
from worker.fetch import fetch
from worker.findings import build_alerts, build_finding
from worker.imaging import (
    FEATURE_NAMES,
    FrameAnalysis,
    ImagingConfig,
    analyze_frame,
    kernels,
    thumbnail_path,
    write_thumbnail,
)
from worker.inference import ModelSet, Prediction, cnn_input
from worker.inference.domain import domains_of
from worker.references import ReferencePolicy
from worker.settings import Settings
from worker.sr import report_of

log = logging.getLogger(__name__)
Clock = Callable[[], float]


@dataclass(frozen=True)
class Prepared:
    """An event after the CPU stages, waiting for inference."""

    event: ScanEvent
    meta: InstanceMeta
    analyses: list[FrameAnalysis]
    cnn_inputs: npt.NDArray[np.float32]  # (frames, 64, 64)
    features: npt.NDArray[np.float32]  # (frames, len(FEATURE_NAMES))
    image: dict[str, Any]
    timings_ms: dict[str, float]
    thumbnail: str | None
    data: bytes = b""  # the instance as received (for its SR, which needs the dataset)


@dataclass(frozen=True)
class Outcome:
    """What one event became: a finding and its alerts, or a rejection."""

    event: ScanEvent
    finding: dict[str, Any] | None = None
    alerts: tuple[dict[str, Any], ...] = ()
    rejection: Rejection | None = None
    # With SCANSTREAM_SR_TOPIC: the finding's DICOM SR (Part 10 bytes), or why there is none.
    sr: bytes | None = None
    sr_error: str | None = None
    sr_ms: float | None = None

    @property
    def reason(self) -> str | None:
        return None if self.rejection is None else self.rejection.reason


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.max_message_bytes, settings.max_pixels, settings.max_frames)


def _check_budget(deadline: float | None, clock: Clock, stage: str, budget_s: float) -> None:
    if deadline is not None and clock() > deadline:
        raise Rejection("timeout", f"the event's time budget of {budget_s:g} s ran out in {stage}")


def prepare(
    event: ScanEvent,
    settings: Settings,
    imaging: ImagingConfig = ImagingConfig(),
    reader: Callable[..., bytes] | None = None,
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> Prepared:
    """Fetch (reference events), decode and analyse every frame. Raises Rejection/TransientError.

    ``deadline`` (on ``clock``) is the event's budget: checked between stages and frames, and no
    fetch may run past it. ``reader`` (uri, max_bytes, timeout_s, sha256) defaults to
    :func:`~worker.fetch.fetch` under the settings' :class:`~worker.references.ReferencePolicy`.
    """
    budget = settings.event_timeout_s
    timings: dict[str, float] = {}
    data = event.data
    if data is None:
        timeout_s = settings.fetch_timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, deadline - clock())
            _check_budget(deadline, clock, "fetch", budget)
        if reader is None:
            reader = functools.partial(fetch, policy=ReferencePolicy.from_settings(settings))
        t0 = time.perf_counter()
        data = reader(event.uri or "", settings.max_message_bytes, timeout_s, event.expected_sha256)
        timings["fetch"] = (time.perf_counter() - t0) * 1e3
    _check_budget(deadline, clock, "fetch", budget)
    t0 = time.perf_counter()
    instance = decode(data, limits_of(settings))
    timings["decode"] = (time.perf_counter() - t0) * 1e3
    analyses = []
    for index, frame in enumerate(instance.frames):
        _check_budget(deadline, clock, f"the analysis of frame {index}", budget)
        analyses.append(analyze_frame(frame, instance.meta.modality, imaging))
    for stage in ("filter", "edges", "features"):
        timings[stage] = sum(a.timings_ms.get(stage, 0.0) for a in analyses)
    image = {"units": instance.meta.units, **frame_stats(instance.frames)}
    return Prepared(
        event=event,
        meta=instance.meta,
        analyses=analyses,
        cnn_inputs=np.stack([cnn_input(a.windowed) for a in analyses]),
        features=np.stack([a.features for a in analyses]).astype(np.float32),
        image=image,
        timings_ms=timings,
        thumbnail=None,  # written with the finding, once the saliency box is known
        data=data,
    )


def frame_stats(frames: npt.NDArray[np.float32]) -> dict[str, float]:
    """Minimum, maximum, mean and (population) standard deviation over all frames.

    OpenCV's ``minMaxLoc`` and ``meanStdDev`` (double accumulators) read the pixels twice where
    numpy's float64 ``mean`` and ``std`` read them four times with temporaries: 0.15 ms against
    0.7 ms for a 512x512 slice here. The values agree with numpy's to float64 rounding.

    >>> frame_stats(np.array([[[1.0, 3.0], [1.0, 3.0]]], np.float32))
    {'min': 1.0, 'max': 3.0, 'mean': 2.0, 'std': 1.0}
    """
    flat = np.ascontiguousarray(frames).reshape(-1, frames.shape[-1])
    lo, hi, _, _ = cv2.minMaxLoc(flat)
    mean, std = cv2.meanStdDev(flat)
    return {"min": float(lo), "max": float(hi), "mean": float(mean[0, 0]), "std": float(std[0, 0])}


def _strongest_frame(analyses: Sequence[FrameAnalysis]) -> int:
    densities = [float(a.features[FEATURE_NAMES.index("edge_density")]) for a in analyses]
    return int(np.argmax(densities))


@dataclass
class _Inference:
    predictions: list[Prediction] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=lambda: {"cnn": 0.0, "svm": 0.0})


class Pipeline:
    """The one composition of the stages: events in, one :class:`Outcome` per event out.

    ``reader``, ``clock`` and ``sleep`` are injectable for tests (a reader that never answers,
    a clock that jumps past the budget). The default reader is :func:`~worker.fetch.fetch` under
    the :class:`~worker.references.ReferencePolicy` of ``settings``, built once here.
    """

    def __init__(
        self,
        models: ModelSet,
        settings: Settings,
        imaging: ImagingConfig = ImagingConfig(),
        reader: Callable[..., bytes] | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.models, self.settings, self.imaging = models, settings, imaging
        self.policy = ReferencePolicy.from_settings(settings)
        reader = reader or functools.partial(fetch, policy=self.policy)
        self._reader, self._clock, self._sleep = reader, clock, sleep
        self._card_notes = tuple(card.intended_use for card in models.cards)
        self.domains = domains_of(models)
        # Compiled here, at start, not on the first event: the feature vector uses the
        # compiled loops whatever the Canny method.
        kernels.warm_up()

    def process(
        self, events: Sequence[ScanEvent], sources: Sequence[dict[str, Any] | None] | None = None
    ) -> list[Outcome]:
        """One outcome per event, in order. ``sources`` (topic, partition, offset) go into the
        findings. Never raises for an event's sake."""
        staged: list[Prepared | Rejection] = [self._prepare(event) for event in events]
        ready = [p for p in staged if isinstance(p, Prepared)]
        inferred = self._infer(ready)
        each = None
        if isinstance(inferred, list):
            found = gather(
                ready, [i.predictions for i in inferred], self.domains, self.models.run_cnn
            )
            each = iter(zip(inferred, found, strict=True))
        outcomes = []
        for i, item in enumerate(staged):
            if isinstance(item, Rejection):
                outcomes.append(Outcome(events[i], rejection=item))
            elif each is None:
                assert isinstance(inferred, Rejection)
                outcomes.append(Outcome(events[i], rejection=inferred))
            else:
                source = sources[i] if sources is not None else None
                inference, evidence = next(each)
                outcomes.append(self._document(item, inference, evidence, source))
        return outcomes

    def _prepare(self, event: ScanEvent) -> Prepared | Rejection:
        deadline = self._clock() + self.settings.event_timeout_s
        attempts = self.settings.fetch_attempts
        for attempt in range(1, attempts + 1):
            try:
                return prepare(
                    event, self.settings, self.imaging, self._reader, deadline, self._clock
                )
            except Rejection as exc:
                return exc
            except TransientError as exc:
                if attempt == attempts:
                    return Rejection(exc.reason, f"after {attempts} attempts: {exc.detail}")
                # Exponential backoff with full jitter, within what is left of the budget.
                pause = random.uniform(0, min(5.0, 0.2 * 2**attempt))
                if self._clock() + pause >= deadline:
                    return Rejection("timeout", f"budget ran out retrying: {exc.detail}")
                self._sleep(pause)
            except Exception as exc:
                log.exception("internal error preparing event %s", event.event_id)
                return Rejection("internal_error", f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _infer(self, prepared: Sequence[Prepared]) -> list[_Inference] | Rejection:
        """Every frame of every prepared event through the models, ``batch_max_size`` at a time
        (one result per event, in order); each event is charged its share of each chunk's
        time. A failure of the models is a Rejection for all of them."""
        out = [_Inference() for _ in prepared]
        owners = [out[i] for i, p in enumerate(prepared) for _ in p.analyses]
        if not owners:
            return out
        cnn = np.concatenate([p.cnn_inputs for p in prepared])
        feats = np.concatenate([p.features for p in prepared])
        size = self.settings.batch_max_size
        try:
            for start in range(0, len(owners), size):
                chunk = slice(start, start + size)
                predictions, timings = self.models.predict(cnn[chunk], feats[chunk])
                share = 1.0 / len(predictions)
                for owner, prediction in zip(owners[chunk], predictions, strict=True):
                    owner.predictions.append(prediction)
                    for model, ms in timings.items():
                        owner.timings_ms[model] = owner.timings_ms.get(model, 0.0) + ms * share
        except Exception as exc:
            log.exception("internal error: inference failed for %d frames", len(owners))
            return Rejection("internal_error", f"inference: {type(exc).__name__}: {exc}")
        return out

    def _document(
        self,
        prepared: Prepared,
        inferred: _Inference,
        evidence: Evidence,
        source: dict[str, Any] | None,
    ) -> Outcome:
        event = prepared.event
        timings = dict(inferred.timings_ms)
        if evidence.saliency:
            timings["saliency"] = evidence.saliency_ms
        try:
            if self.settings.thumbnail_dir:
                prepared = self._thumbnail(prepared, evidence)
            finding = build_finding(
                prepared,
                inferred.predictions,
                timings,
                self.models,
                self.settings,
                source,
                checks=evidence.checks,
                saliency=evidence.saliency,
            )
            alerts = build_alerts(finding, self.settings)
        except Exception as exc:
            log.exception("internal error building the finding of event %s", event.event_id)
            return Outcome(event, rejection=Rejection("internal_error", f"{exc!r}"))
        for name, document in [("finding.v1", finding), *(("alert.v1", a) for a in alerts)]:
            errors = validation_errors(name, document)
            if errors:
                detail = f"the {name} document would break its schema: {'; '.join(errors[:3])}"
                return Outcome(event, rejection=Rejection("contract_violation", detail))
        if not self.settings.sr_topic:
            return Outcome(event, finding=finding, alerts=tuple(alerts))
        sr, sr_error, sr_ms = report_of(prepared.data, finding, self._card_notes)
        return Outcome(event, finding, tuple(alerts), sr=sr, sr_error=sr_error, sr_ms=sr_ms)

    def _thumbnail(self, prepared: Prepared, evidence: Evidence) -> Prepared:
        """The edge map of the frame with the most edges, with the strongest-edge and the
        saliency boxes drawn where they lie on that frame; named by a hash, never by DICOM."""
        assert self.settings.thumbnail_dir
        best = _strongest_frame(prepared.analyses)
        analysis = prepared.analyses[best]
        box = analysis.edge_bbox
        saliency = next(
            (doc["bbox"] for (frame, _), doc in evidence.saliency.items() if frame == best), None
        )
        path = thumbnail_path(
            self.settings.thumbnail_dir, prepared.event.event_id, prepared.meta.sop_uid
        )
        write_thumbnail(analysis.edge_map, path, edge_bbox=box, saliency_bbox=saliency, frame=None)
        return dataclasses.replace(prepared, thumbnail=str(path))


def analyze(
    event: ScanEvent,
    models: ModelSet,
    settings: Settings,
    imaging: ImagingConfig = ImagingConfig(),
) -> dict[str, Any]:
    """The whole pipeline for one event, synchronously (offline analysis). Raises Rejection."""
    [outcome] = Pipeline(models, settings, imaging).process([event])
    if outcome.rejection is not None:
        raise outcome.rejection
    assert outcome.finding is not None
    return outcome.finding


#: Fields of a finding that mean nothing offline: no event was sent, so the time since a file's
#: modification would read as a latency of hours.
OFFLINE_OMITS: Final = ("latency_ms", "sent_at")


def offline_report(finding: dict[str, Any]) -> dict[str, Any]:
    """``scanstream analyze``'s line for one file: the finding without :data:`OFFLINE_OMITS`,
    marked ``"offline": true`` (so it is not a finding.v1 document, and says why).

    >>> offline_report({"event_id": "a.dcm", "latency_ms": 43417.0, "sent_at": "x"})
    {'event_id': 'a.dcm', 'offline': True}
    """
    report = {k: v for k, v in finding.items() if k not in OFFLINE_OMITS}
    report["offline"] = True
    return report


__all__ = [
    "OFFLINE_OMITS",
    "Outcome",
    "Pipeline",
    "Prepared",
    "analyze",
    "build_alerts",
    "build_finding",
    "offline_report",
]
