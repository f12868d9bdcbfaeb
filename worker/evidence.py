"""The evidence stage of a batch: each frame against each model's input domain, and where the
CNN looked on the frames it calls positive. Pure over the prepared events and their predictions
(the CNN is one callable); :class:`worker.pipeline.Pipeline` runs it between inference and the
findings.

Saliency (occlusion sensitivity, :mod:`worker.inference.saliency`) is computed only for frames
the CNN calls positive and that are not outside its declared domain: an out-of-domain frame never
raises an alert, and its saliency would explain a score that means nothing. The occluded copies
of every such frame of the batch go through the CNN together. Its time is shared among the
events that had such frames (``saliency`` in their timings).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.inference import Prediction
from worker.inference.domain import NOT_DECLARED, DomainCheck, InputDomain, frame_checks
from worker.inference.saliency import explain_frames

if TYPE_CHECKING:
    from worker.pipeline import Prepared

log = logging.getLogger(__name__)


@dataclass
class Evidence:
    """One event's evidence: per frame, each declared model's check; (frame, model) -> the
    saliency document; and the milliseconds its saliency cost."""

    checks: list[dict[str, DomainCheck]]
    saliency: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    saliency_ms: float = 0.0


def gather(
    prepared: Sequence[Prepared],
    predictions: Sequence[Sequence[Prediction]],
    domains: Mapping[str, InputDomain],
    run_cnn: Callable[[Any], tuple[Any, Any]],
) -> list[Evidence]:
    """The evidence of each prepared event (aligned with ``prepared``)."""
    out = [
        Evidence(frame_checks(p.meta, [a.features for a in p.analyses], domains)) for p in prepared
    ]
    wanted = [
        (k, f, prediction)
        for k, (evidence, frames) in enumerate(zip(out, predictions, strict=True))
        for f, prediction in enumerate(frames)
        if prediction.cnn_probability >= prediction.cnn_threshold
        and evidence.checks[f].get(prediction.cnn_model, NOT_DECLARED).in_domain is not False
    ]
    if not wanted:
        return out
    t0 = time.perf_counter()
    try:
        explained = explain_frames(
            np.stack([prepared[k].cnn_inputs[f] for k, f, _ in wanted]),
            run_cnn,
            frames=[f for _, f, _ in wanted],
            frame_shapes=[(prepared[k].meta.rows, prepared[k].meta.columns) for k, _, _ in wanted],
            baseline=np.array([p.cnn_logit for _, _, p in wanted], dtype=np.float64),
        )
    except Exception:  # our bug or the model's: the findings go on without saliency
        log.exception("saliency failed for %d frames", len(wanted))
        return out
    share = (time.perf_counter() - t0) * 1e3 / len(wanted)
    for (k, f, prediction), result in zip(wanted, explained, strict=True):
        document = result.to_document()
        if document is not None:
            out[k].saliency[(f, prediction.cnn_model)] = document
        out[k].saliency_ms += share
    return out
