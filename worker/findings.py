"""The documents of the contract, built from a prepared event and its predictions: the
finding (``schemas/finding.v1.json``) and its alerts (``schemas/alert.v1.json``). Pure functions,
no Kafka and no I/O; :class:`worker.pipeline.Pipeline` calls them and checks each document
against its schema before anything is produced.

A multi-frame instance is analysed frame by frame and yields one finding: features are averaged
over frames, each model's classification is that of the frame with the highest lesion
probability among the frames in the model's declared input domain (among all frames when none
is; reported with its index, its domain check and, for a positive CNN frame, its saliency box),
and ``frames`` lists the first 64 frames' summaries. Alerts fire only on classifications whose
frame is in the model's domain (``in_domain: true``): never on an image the model never learnt,
nor on a model whose card declares no domain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.contract import alert_id, finding_id, patient_key, rfc3339
from worker.imaging import FEATURE_NAMES, FrameAnalysis
from worker.inference import ModelSet, Prediction
from worker.inference.domain import NOT_DECLARED, DomainCheck
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


def _finite(score: float | None) -> float | None:
    """A domain score fit for JSON (no NaN or infinity: those frames are out all the same)."""
    return None if score is None or not math.isfinite(score) else round(score, 4)


def _decide(
    per_frame: list[list[dict[str, Any]]],
    checks: Sequence[Mapping[str, DomainCheck]] | None,
    saliency: Mapping[tuple[int, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per model, the deciding frame's classification with its domain check: the most probable
    frame among those in the model's domain, else among all (an out-of-domain frame can then
    decide, but it never raises an alert)."""
    per_model: dict[str, dict[str, Any]] = {}
    outside: dict[str, int] = {}
    for index, classifications in enumerate(per_frame):
        for cls in classifications:
            model = cls["model"]
            check = checks[index].get(model, NOT_DECLARED) if checks is not None else NOT_DECLARED
            outside[model] = outside.get(model, 0) + (check.in_domain is False)
            entry = {
                **cls,
                "frame": index,
                "in_domain": check.in_domain,
                "domain_reasons": list(check.reasons),
                "domain_score": _finite(check.score),
                "saliency": saliency.get((index, model)),
            }
            best = per_model.get(model)
            rank = (check.in_domain is True, cls["probability"])
            if best is None or rank > (best["in_domain"] is True, best["probability"]):
                per_model[model] = entry
    for model, entry in per_model.items():
        entry["frames_out_of_domain"] = outside[model]
    return list(per_model.values())


def build_finding(
    prepared: Prepared,
    predictions: Sequence[Prediction],
    inference_ms: dict[str, float],
    models: ModelSet,
    settings: Settings,
    source: dict[str, Any] | None = None,
    checks: Sequence[Mapping[str, DomainCheck]] | None = None,
    saliency: Mapping[tuple[int, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The finding.v1 document for one prepared event and its per-frame predictions.

    ``checks``: per frame, each model's :class:`~worker.inference.domain.DomainCheck` (None:
    no domain declared); ``saliency``: (frame, model) -> the saliency document of that frame.
    """
    t0 = time.perf_counter()
    meta = prepared.meta
    infos = models.model_infos()
    per_frame = [prediction.to_classifications() for prediction in predictions]
    classifications = _decide(per_frame, checks, saliency or {})
    density_index = FEATURE_NAMES.index("edge_density")
    frames = [
        {
            "index": i,
            "lesion_probability": float(max(c["probability"] for c in frame)),
            "edge_density": float(a.features[density_index]),
        }
        for i, (frame, a) in enumerate(zip(per_frame, prepared.analyses, strict=True))
    ][:MAX_FRAME_SUMMARIES]
    mean_features = prepared.features.astype(np.float64).mean(axis=0)
    lows, highs = zip(*(a.canny_thresholds for a in prepared.analyses), strict=True)
    timings = {
        **prepared.timings_ms,
        **{k: v for k, v in inference_ms.items() if k in ("cnn", "svm", "saliency")},
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
        "classifications": classifications,
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
            # Only where the model knows the image: an out-of-domain (or undeclared) frame's
            # probability says nothing a radiologist should be paged for.
            if c["label"] == rule.label
            and c["probability"] >= rule.threshold
            and c.get("in_domain") is True
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
