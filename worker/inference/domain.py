"""A model's declared input domain, and the check of one frame against it.

A card may declare, under ``input_domain``, what the model learned from (``scanstream train``
writes it for the shipped models; a card without one still loads, and its classifications say
``in_domain: null``, "undeclared"):

.. code-block:: json

    {"modalities": ["CT"],
     "rows": [128, 512], "columns": [128, 512],
     "pixel_spacing_mm": [0.5, 1.0],
     "values": {"units": "HU", "p01": [-1100.0, -900.0], "p99": [0.0, 400.0]},
     "features": {"names": ["int_mean", "..."], "mean": [...], "scale": [...],
                  "precision": [[...]], "threshold": 9.1, "coverage": 0.995,
                  "held_out_in_domain": 0.997}}

The feature part is a Gaussian model of the training split's feature vectors: each vector is
standardised, ``z = (x - mean) / scale``, and scored by its Mahalanobis distance
``sqrt(z . precision . z)``; ``threshold`` is the distance that ``coverage`` of the in-domain
calibration split stays within, and ``held_out_in_domain`` the share of the held-out test split
within it. A frame is in domain when every declared part holds; each part that does not is a
reason (:data:`REASONS`). The score is the distance over the threshold (at most 1 in domain on
the features), or ``None`` when no features are declared.

>>> domain = InputDomain.from_card({"modalities": ["CT"], "rows": [64, 512], "columns": [64, 512]})
>>> domain.check(FrameFacts("MR", 256, 256, None, None)).reasons
('modality',)
>>> domain.check(FrameFacts("CT", 1024, 256, None, None)).reasons
('size',)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from worker.errors import ModelError

REASONS: Final = ("modality", "size", "spacing", "values", "features")
UNDECLARED: Final = "undeclared"


@dataclass(frozen=True)
class FrameFacts:
    """What the check needs of one frame: its modality, size, spacing and feature vector
    (in :data:`worker.imaging.FEATURE_NAMES` order; ``int_p01``/``int_p99`` give the values)."""

    modality: str | None
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None
    features: npt.NDArray[np.float32] | None
    feature_names: Sequence[str] = ()


@dataclass(frozen=True)
class DomainCheck:
    """One frame against one model's domain: ``in_domain`` is None when none is declared."""

    in_domain: bool | None
    reasons: tuple[str, ...] = ()
    score: float | None = None


NOT_DECLARED: Final = DomainCheck(None, (), None)


def _range(raw: Any, where: str) -> tuple[float, float] | None:
    if raw is None:
        return None
    try:
        low, high = (float(v) for v in raw)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"input_domain.{where} must be [min, max]") from exc
    if not low <= high:
        raise ModelError(f"input_domain.{where}: min {low} exceeds max {high}")
    return low, high


@dataclass(frozen=True)
class FeatureModel:
    """The Gaussian model of the training features (see the module docstring)."""

    names: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    precision: npt.NDArray[np.float64]
    threshold: float

    def distance(self, features: npt.NDArray[np.floating[Any]]) -> float:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        squared = float(z @ self.precision @ z)
        if not math.isfinite(squared):  # a NaN or infinite feature: as far as can be
            return math.inf
        return math.sqrt(max(0.0, squared))


@dataclass(frozen=True)
class InputDomain:
    """A parsed ``input_domain``; parts left out are not checked."""

    modalities: tuple[str, ...] | None = None
    rows: tuple[float, float] | None = None
    columns: tuple[float, float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    p01: tuple[float, float] | None = None
    p99: tuple[float, float] | None = None
    features: FeatureModel | None = None

    @classmethod
    def from_card(cls, raw: Mapping[str, Any]) -> InputDomain:
        """Parse a card's ``input_domain``; ModelError says which part is malformed."""
        values = raw.get("values") or {}
        model = None
        if raw.get("features") is not None:
            f = raw["features"]
            try:
                names = tuple(str(n) for n in f["names"])
                mean = np.asarray(f["mean"], dtype=np.float64)
                scale = np.asarray(f["scale"], dtype=np.float64)
                precision = np.asarray(f["precision"], dtype=np.float64)
                threshold = float(f["threshold"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(f"input_domain.features is malformed: {exc!r}") from exc
            n = len(names)
            if mean.shape != (n,) or scale.shape != (n,) or precision.shape != (n, n):
                raise ModelError("input_domain.features: mean, scale, precision must fit names")
            if not (np.all(scale > 0) and threshold > 0 and np.all(np.isfinite(precision))):
                raise ModelError("input_domain.features: scale and threshold must be > 0")
            model = FeatureModel(names, mean, scale, precision, threshold)
        modalities = raw.get("modalities")
        return cls(
            modalities=None if modalities is None else tuple(str(m).upper() for m in modalities),
            rows=_range(raw.get("rows"), "rows"),
            columns=_range(raw.get("columns"), "columns"),
            pixel_spacing_mm=_range(raw.get("pixel_spacing_mm"), "pixel_spacing_mm"),
            p01=_range(values.get("p01"), "values.p01"),
            p99=_range(values.get("p99"), "values.p99"),
            features=model,
        )

    def check(self, frame: FrameFacts) -> DomainCheck:
        """The frame against every declared part; the reasons in :data:`REASONS` order."""
        reasons: list[str] = []
        if self.modalities is not None and (frame.modality or "").upper() not in self.modalities:
            reasons.append("modality")
        if not (_within(frame.rows, self.rows) and _within(frame.columns, self.columns)):
            reasons.append("size")
        if self.pixel_spacing_mm is not None and (
            frame.pixel_spacing_mm is None
            or not all(_within(s, self.pixel_spacing_mm) for s in frame.pixel_spacing_mm)
        ):
            reasons.append("spacing")
        score = None
        named = dict(zip(frame.feature_names, range(len(frame.feature_names)), strict=False))
        if frame.features is not None and (self.p01 is not None or self.p99 is not None):
            p01 = float(frame.features[named["int_p01"]]) if "int_p01" in named else None
            p99 = float(frame.features[named["int_p99"]]) if "int_p99" in named else None
            if not (_within(p01, self.p01) and _within(p99, self.p99)):
                reasons.append("values")
        if self.features is not None:
            if frame.features is None or tuple(frame.feature_names) != self.features.names:
                reasons.append("features")  # not the vector the model was described with
            else:
                score = self.features.distance(frame.features) / self.features.threshold
                if not score <= 1.0:  # NaN too
                    reasons.append("features")
        return DomainCheck(not reasons, tuple(reasons), score)


def _within(value: float | None, bounds: tuple[float, float] | None) -> bool:
    if bounds is None:
        return True
    if value is None or not math.isfinite(value):
        return False
    return bounds[0] <= value <= bounds[1]


def domains_of(models: Any) -> dict[str, InputDomain]:
    """The declared input domain of each model (a :class:`~worker.inference.ModelSet`) whose
    card has one, by model name; models without one are left out (undeclared)."""
    return {
        card.name: InputDomain.from_card(card.input_domain)
        for card in models.cards
        if card.input_domain
    }


def frame_checks(
    meta: Any, features: Sequence[npt.NDArray[np.float32]], domains: Mapping[str, InputDomain]
) -> list[dict[str, DomainCheck]]:
    """Per frame (``features``: each frame's vector, in FEATURE_NAMES order) of the instance
    ``meta`` (:class:`~worker.dicom.InstanceMeta`), each declared model's check."""
    from worker.imaging import FEATURE_NAMES

    return [
        {
            name: domain.check(
                FrameFacts(
                    meta.modality,
                    meta.rows,
                    meta.columns,
                    meta.pixel_spacing_mm,
                    vector,
                    FEATURE_NAMES,
                )
            )
            for name, domain in domains.items()
        }
        for vector in features
    ]
