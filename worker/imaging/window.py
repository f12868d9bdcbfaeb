"""Display windows in modality units: named HU windows for CT, percentiles for everything else.

A window ``(center, width)`` maps ``center - width/2`` to 0 and ``center + width/2`` to 1,
clipping outside (the plain linear window; DICOM's ``-0.5``/``width-1`` refinement matters only
for integer display levels, not for a float [0, 1] output).

CT frames are in Hounsfield units, where fixed windows mean the same tissue on every scanner, so
CT uses :data:`CT_WINDOWS` (soft tissue by default). Other modalities have no absolute scale:
their window spans two percentiles of the frame itself (:data:`MODALITY_PERCENTILES`, default
:data:`DEFAULT_PERCENTILES`).

>>> import numpy as np
>>> hu = np.array([[-1000.0, 40.0], [240.0, 3000.0]], np.float32)
>>> window(hu, *CT_WINDOWS["soft_tissue"]).tolist()
[[0.0, 0.5], [1.0, 1.0]]
>>> default_window(hu, "CT")
(40.0, 400.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.stats import quantiles, subsample

#: Named CT windows, ``(center, width)`` in HU.
CT_WINDOWS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "soft_tissue": (40.0, 400.0),
        "mediastinum": (50.0, 350.0),
        "lung": (-600.0, 1500.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
        "liver": (60.0, 160.0),
    }
)
DEFAULT_PERCENTILES: Final = (1.0, 99.0)
_F32_SAFE: Final = 1e37
#: Percentile windows for modalities without an absolute scale.
MODALITY_PERCENTILES: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "MR": (0.5, 99.5),
        # Emission images: background is ~0 and the hottest spots are what matters.
        "PT": (0.0, 99.5),
        "NM": (0.0, 99.5),
        "CR": (0.5, 99.5),
        "DX": (0.5, 99.5),
        "MG": (0.5, 99.5),
        "US": (1.0, 99.0),
    }
)


def window(
    frame: npt.NDArray[np.float32], center: float, width: float, *, peak: float | None = None
) -> npt.NDArray[np.float32]:
    """``frame`` (float32, modality units) through the window, as float32 in [0, 1].

    ``peak``, the largest ``abs`` of ``frame`` when the caller has it already, saves a pass.

    >>> window(np.array([[0.0, 50.0, 100.0]], np.float32), 50.0, 100.0).tolist()
    [[0.0, 0.5, 1.0]]
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    low, scale = center - width / 2.0, 1.0 / width
    reach = (float(cv2.norm(frame, cv2.NORM_INF)) if peak is None else peak) + abs(low)
    if reach < _F32_SAFE and 1.0 / _F32_SAFE < scale < _F32_SAFE and reach * scale < _F32_SAFE:
        out = np.subtract(frame, np.float32(low), dtype=np.float32)
        out *= np.float32(scale)
        np.clip(out, np.float32(0.0), np.float32(1.0), out=out)
        return out
    # Extreme values or windows would overflow float32 on the way: go through float64.
    return np.clip((frame.astype(np.float64) - low) * scale, 0.0, 1.0).astype(np.float32)


def percentile_window(
    frame: npt.NDArray[np.float32], low_pct: float, high_pct: float
) -> tuple[float, float]:
    """The window spanning two percentiles of ``frame`` (on the :mod:`stats` subsample).

    Falls back to the full min..max range when the percentiles coincide (a mostly flat frame
    with a small bright spot), and to width 1 for a constant frame, so the width is always > 0.

    >>> percentile_window(np.arange(101, dtype=np.float32).reshape(1, 101), 10, 90)
    (50.0, 80.0)
    """
    lo, hi = (float(v) for v in quantiles(subsample(frame), (low_pct, high_pct)))
    if not hi > lo:
        lo, hi, _, _ = cv2.minMaxLoc(frame)
    if not hi > lo:
        return float(lo), 1.0
    return (lo + hi) / 2.0, hi - lo


def default_window(
    frame: npt.NDArray[np.float32],
    modality: str,
    *,
    ct_window: str = "soft_tissue",
    percentiles: tuple[float, float] | None = None,
    override: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """The ``(center, width)`` for ``modality``: ``override`` if given, a named HU window for CT,
    else ``percentiles`` (or the modality's entry in :data:`MODALITY_PERCENTILES`).

    >>> default_window(np.zeros((2, 2), np.float32), "ct", ct_window="lung")
    (-600.0, 1500.0)
    """
    if override is not None:
        return override
    mod = modality.strip().upper()
    if mod == "CT":
        try:
            return CT_WINDOWS[ct_window]
        except KeyError:
            raise ValueError(
                f"unknown CT window {ct_window!r}; choose one of {sorted(CT_WINDOWS)}"
            ) from None
    pcts = percentiles or MODALITY_PERCENTILES.get(mod, DEFAULT_PERCENTILES)
    return percentile_window(frame, *pcts)
