"""The data path of one event as plain functions: fetch, decode, imaging, inference, finding.

Nothing here knows about Kafka. :func:`prepare` does the per-event CPU work (decode and image
analysis of every frame) and raises :class:`~worker.errors.Rejection` for anything that cannot
become a finding; inference is batched across events by the caller (the runtime's micro-batcher,
or :func:`analyze` offline); :func:`build_finding` and :func:`build_alerts` produce the documents
of ``schemas/finding.v1.json`` and ``schemas/alert.v1.json``.

A multi-frame instance is analysed frame by frame and yields one finding: features are averaged
over frames, each model's classification is that of the frame with the highest lesion
probability (reported with its index), and ``frames`` lists the first 64 frames' summaries.

>>> from worker.phantoms import ct_slice, encode_ct
>>> from worker.contract import ScanEvent
>>> from worker.inference import ModelSet
>>> event = ScanEvent("e1", 0.0, data=encode_ct(ct_slice(1, 64)))
>>> finding = analyze(event, ModelSet.load(), Settings())
>>> finding["frame_count"], finding["modality"], len(finding["classifications"])
(1, 'CT', 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.contract import ScanEvent, alert_id, finding_id, patient_key, rfc3339
from worker.dicom import InstanceMeta, Limits, decode
from worker.fetch import fetch
from worker.imaging import (
    FEATURE_NAMES,
    FrameAnalysis,
    ImagingConfig,
    analyze_frame,
    write_thumbnail,
)
from worker.inference import ModelSet, Prediction, cnn_input
from worker.settings import Settings

MAX_FRAME_SUMMARIES = 64


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


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.max_message_bytes, settings.max_pixels, settings.max_frames)


def prepare(
    event: ScanEvent,
    settings: Settings,
    imaging: ImagingConfig = ImagingConfig(),
    reader: Callable[..., bytes] = fetch,
) -> Prepared:
    """Fetch (reference events), decode and analyse every frame. Raises Rejection/TransientError."""
    timings: dict[str, float] = {}
    data = event.data
    if data is None:
        t0 = time.perf_counter()
        data = reader(
            event.uri or "",
            settings.max_message_bytes,
            settings.fetch_timeout_s,
            event.expected_sha256,
        )
        timings["fetch"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    instance = decode(data, limits_of(settings))
    timings["decode"] = (time.perf_counter() - t0) * 1e3
    analyses = [analyze_frame(frame, instance.meta.modality, imaging) for frame in instance.frames]
    for stage in ("filter", "edges", "features"):
        timings[stage] = sum(a.timings_ms.get(stage, 0.0) for a in analyses)
    frames = instance.frames
    image = {
        "units": instance.meta.units,
        "min": float(frames.min()),
        "max": float(frames.max()),
        "mean": float(frames.mean(dtype=np.float64)),
        "std": float(frames.std(dtype=np.float64)),
    }
    thumbnail = None
    if settings.thumbnail_dir:
        best = _strongest_frame(analyses)
        path = Path(settings.thumbnail_dir) / f"{instance.meta.sop_uid or event.event_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_thumbnail(analyses[best].edge_map, path)
        thumbnail = str(path)
    return Prepared(
        event=event,
        meta=instance.meta,
        analyses=analyses,
        cnn_inputs=np.stack([cnn_input(a.windowed) for a in analyses]),
        features=np.stack([a.features for a in analyses]).astype(np.float32),
        image=image,
        timings_ms=timings,
        thumbnail=thumbnail,
    )


def _strongest_frame(analyses: Sequence[FrameAnalysis]) -> int:
    densities = [float(a.features[FEATURE_NAMES.index("edge_density")]) for a in analyses]
    return int(np.argmax(densities))


def _bbox(analyses: Sequence[FrameAnalysis]) -> dict[str, int] | None:
    boxes = [(i, a.edge_bbox) for i, a in enumerate(analyses) if a.edge_bbox is not None]
    if not boxes:
        return None
    frame, (x, y, w, h) = max(boxes, key=lambda item: item[1][2] * item[1][3])  # type: ignore[index]
    return {"frame": frame, "x": x, "y": y, "width": max(1, w), "height": max(1, h)}


def build_finding(
    prepared: Prepared,
    predictions: Sequence[Prediction],
    inference_ms: dict[str, float],
    models: ModelSet,
    settings: Settings,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The finding.v1 document for one prepared event and its per-frame predictions."""
    t0 = time.perf_counter()
    meta = prepared.meta
    infos = models.model_infos()
    per_frame = [prediction.to_classifications() for prediction in predictions]
    per_model: dict[str, dict[str, Any]] = {}
    for index, classifications in enumerate(per_frame):
        for cls in classifications:
            best = per_model.get(cls["model"])
            if best is None or cls["probability"] > best["probability"]:
                per_model[cls["model"]] = {**cls, "frame": index}
    density_index = FEATURE_NAMES.index("edge_density")
    frames = [
        {
            "index": i,
            "lesion_probability": float(max(c["probability"] for c in classifications)),
            "edge_density": float(a.features[density_index]),
        }
        for i, (classifications, a) in enumerate(zip(per_frame, prepared.analyses, strict=True))
    ][:MAX_FRAME_SUMMARIES]
    mean_features = prepared.features.astype(np.float64).mean(axis=0)
    lows, highs = zip(*(a.canny_thresholds for a in prepared.analyses), strict=True)
    timings = {
        **prepared.timings_ms,
        **{k: v for k, v in inference_ms.items() if k in ("cnn", "svm")},
    }
    now = time.time()
    timings["finding"] = (time.perf_counter() - t0) * 1e3
    finding: dict[str, Any] = {
        "schema": "scanstream.finding.v1",
        "finding_id": finding_id(meta.sop_uid, [(m["name"], m["version"]) for m in infos]),
        "event_id": prepared.event.event_id,
        "study_instance_uid": meta.study_uid or None,
        "series_instance_uid": meta.series_uid or None,
        "sop_instance_uid": meta.sop_uid,
        "patient_key": patient_key(meta.patient_id, settings.pseudonym_key.reveal()),
        "modality": meta.modality,
        "transfer_syntax": meta.transfer_syntax,
        "rows": meta.rows,
        "columns": meta.columns,
        "frame_count": len(prepared.analyses),
        "image": prepared.image,
        "edges": {
            "feature_names": list(FEATURE_NAMES),
            "features": [round(float(v), 6) for v in mean_features],
            "edge_density": float(mean_features[density_index]),
            "canny_thresholds": [float(np.mean(lows)), float(np.mean(highs))],
            "strongest_edge_bbox": _bbox(prepared.analyses),
            "thumbnail": prepared.thumbnail,
        },
        "frames": frames,
        "classifications": list(per_model.values()),
        "models": infos,
        "timings_ms": {k: round(max(0.0, v), 3) for k, v in timings.items()},
        "latency_ms": round(max(0.0, (now - prepared.event.sent_at) * 1e3), 3),
        "sent_at": rfc3339(prepared.event.sent_at),
        "produced_at": rfc3339(now),
        "worker_id": settings.worker_id,
    }
    if source is not None:
        finding["source"] = source
    return finding


def build_alerts(finding: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """alert.v1 documents for every rule that the finding's classifications meet."""
    alerts = []
    for rule in settings.alert_rules:
        if rule.modality and rule.modality != finding["modality"]:
            continue
        hits = [
            c
            for c in finding["classifications"]
            if c["label"] == rule.label and c["probability"] >= rule.threshold
        ]
        if not hits:
            continue
        top = max(hits, key=lambda c: c["probability"])
        alerts.append(
            {
                "schema": "scanstream.alert.v1",
                "alert_id": alert_id(
                    finding["finding_id"], rule.label, rule.threshold, rule.modality
                ),
                "finding_id": finding["finding_id"],
                "event_id": finding["event_id"],
                "study_instance_uid": finding["study_instance_uid"],
                "series_instance_uid": finding["series_instance_uid"],
                "sop_instance_uid": finding["sop_instance_uid"],
                "modality": finding["modality"],
                "label": rule.label,
                "probability": top["probability"],
                "model": top["model"],
                "severity": rule.severity,
                "rule": {
                    "label": rule.label,
                    "threshold": rule.threshold,
                    "modality": rule.modality,
                },
                "raised_at": rfc3339(time.time()),
                "worker_id": finding["worker_id"],
            }
        )
    return alerts


def analyze(
    event: ScanEvent,
    models: ModelSet,
    settings: Settings,
    imaging: ImagingConfig = ImagingConfig(),
) -> dict[str, Any]:
    """The whole pipeline for one event, synchronously (offline analysis). Raises Rejection."""
    prepared = prepare(event, settings, imaging)
    predictions, timings = models.predict(prepared.cnn_inputs, prepared.features)
    return build_finding(prepared, predictions, timings, models, settings)
