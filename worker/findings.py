"""The documents of the contract, built from a prepared event and its predictions: the
finding (``schemas/finding.v1.json``) and its alerts (``schemas/alert.v1.json``). Pure functions,
no Kafka and no I/O; :class:`worker.pipeline.Pipeline` calls them and checks each document
against its schema before anything is produced.

A multi-frame instance is analysed frame by frame and yields one finding: features are averaged
over frames, each model's classification is that of the frame with the highest lesion
probability (reported with its index), and ``frames`` lists the first 64 frames' summaries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.contract import alert_id, finding_id, patient_key, rfc3339
from worker.imaging import FEATURE_NAMES, FrameAnalysis
from worker.inference import ModelSet, Prediction
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.pipeline import Prepared

MAX_FRAME_SUMMARIES = 64


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
