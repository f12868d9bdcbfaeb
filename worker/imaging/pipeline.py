"""One frame through the stage: window, denoise, Sobel, Canny, features and evidence.

>>> import numpy as np
>>> from worker.phantoms import ct_slice
>>> a = analyze_frame(ct_slice(seed=1, size=64), "CT")
>>> a.features.shape, a.windowed.dtype, a.edge_map.dtype, sorted(a.timings_ms)
((28,), dtype('float32'), dtype('uint8'), ['edges', 'features', 'filter'])
>>> a.edge_bbox is not None and a.canny_thresholds[0] < a.canny_thresholds[1]
True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.config import ImagingConfig
from worker.imaging.edges import detect_edges, sobel, thresholds_from_percentiles
from worker.imaging.feature_vector import FEATURE_NAMES, GRADIENT_PERCENTILES, features
from worker.imaging.filters import as_float32, gaussian_filter, mean_filter, median_filter
from worker.imaging.reductions import sum_and_squares
from worker.imaging.stats import quantiles, subsample
from worker.imaging.window import default_window, window

DEFAULT_CONFIG: Final = ImagingConfig()
_SAFE_HIGH: Final = 2.0**56
_SAFE_LOW: Final = 2.0**-56
_GRAD_PCTS: Final = (*GRADIENT_PERCENTILES, 99.5)

#: Fine-grained stage names timed by :func:`analyze_frame_stages`, in pipeline order.
STAGES: Final = ("window", "filter", "sobel", "canny", "features")


@dataclass(frozen=True, eq=False)
class FrameAnalysis:
    """What the imaging stage learns about one frame."""

    features: npt.NDArray[np.float32]  # (len(FEATURE_NAMES),)
    windowed: npt.NDArray[np.float32]  # (H, W) in [0, 1], modality-default window
    edge_map: npt.NDArray[np.uint8]  # (H, W), 0/255 Canny output
    edge_bbox: tuple[int, int, int, int] | None  # (x, y, width, height) of the strongest region
    canny_thresholds: tuple[float, float]  # (low, high), gradient-magnitude units
    timings_ms: dict[str, float]  # "filter" (window included), "edges", "features"

    def named_features(self) -> dict[str, float]:
        """The feature vector as ``{name: value}`` in :data:`FEATURE_NAMES` order (for evidence).

        >>> a = analyze_frame(np.full((4, 4), 7.0, np.float32), "MR")
        >>> a.named_features()["int_mean"], len(a.named_features())
        (7.0, 28)
        """
        return dict(zip(FEATURE_NAMES, self.features.tolist(), strict=True))


def _safe_scale(img: npt.NDArray[np.float32], peak: float) -> tuple[npt.NDArray[np.float32], float]:
    """``img / gain``, ``gain`` a power of two (exact), 1 unless ``img``'s ``peak`` is extreme."""
    if _SAFE_LOW <= peak <= _SAFE_HIGH or peak == 0.0:
        return img, 1.0
    exponent = math.floor(math.log2(peak))
    return np.ldexp(img, -exponent).astype(np.float32, copy=False), 2.0**exponent


def denoise(frame: npt.NDArray[np.float32], config: ImagingConfig) -> npt.NDArray[np.float32]:
    """``frame`` through the filter ``config.denoise`` names (``"none"``: unchanged).

    >>> denoise(np.ones((4, 4), np.float32), ImagingConfig(denoise="median")).sum()
    np.float32(16.0)
    """
    if config.denoise == "gaussian":
        return gaussian_filter(frame, config.gaussian_sigma, config.gaussian_ksize)
    if config.denoise == "median":
        return median_filter(frame, config.median_ksize)
    if config.denoise == "mean":
        return mean_filter(frame, config.mean_ksize)
    return frame


def analyze_frame_stages(
    frame: npt.ArrayLike, modality: str, config: ImagingConfig = DEFAULT_CONFIG
) -> tuple[FrameAnalysis, dict[str, float]]:
    """:func:`analyze_frame`, plus milliseconds per fine stage (:data:`STAGES`), for benchmarks."""
    img = as_float32(frame)
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"a frame needs at least 2x2 pixels, got {img.shape}")
    clock = time.perf_counter
    t0 = clock()  # the "window" stage includes these checks on the frame
    # A double-precision sum is NaN or inf exactly when some pixel is (finite float32 values
    # cannot overflow it), and costs a tenth of cv2.checkRange; the same pass sums the squares,
    # and the features reuse both.
    sums = sum_and_squares(img)
    if not math.isfinite(sums[0]):
        raise ValueError("frame holds NaN or infinite values")
    # Gradients of values beyond ~1e18 overflow float32 (and of values below ~1e-19 underflow
    # when squared): such frames are analysed scaled by an exact power of two, and the
    # gradient-valued results scaled back.
    peak = float(cv2.norm(img, cv2.NORM_INF))
    work, gain = _safe_scale(img, peak)
    center, width = default_window(
        img,
        modality,
        ct_window=config.ct_window,
        percentiles=config.percentiles,
        override=config.window,
    )
    windowed = window(img, center, width, peak=peak)
    t1 = clock()
    smooth = denoise(work, config)
    t2 = clock()
    grad = sobel(smooth)
    t3 = clock()
    # One selection serves both the thresholds and the gradient features.
    p50, p90, p99, p995 = (float(v) for v in quantiles(subsample(grad.magnitude), _GRAD_PCTS))
    if config.canny_thresholds is not None:
        low, high = (float(v) / gain for v in config.canny_thresholds)
    else:
        low, high = thresholds_from_percentiles(
            p50, p995, config.canny_noise_k, config.canny_floor, config.canny_low_ratio
        )
    edges, idx, regions = detect_edges(grad, low, high, config.canny_method)
    t4 = clock()
    vec = features(
        img,
        windowed,
        grad,
        edges,
        indices=idx,
        regions=regions,
        gradient_percentiles=(p50, p90, p99),
        gradient_scale=gain,
        frame_sums=sums,
    )
    t5 = clock()
    fine = {
        name: (b - a) * 1e3
        for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True)
    }
    timings = {
        "filter": fine["window"] + fine["filter"],
        "edges": fine["sobel"] + fine["canny"],
        "features": fine["features"],
    }
    thresholds = (low * gain, high * gain)
    result = FrameAnalysis(vec, windowed, edges, regions.bbox, thresholds, timings)
    return result, fine


def analyze_frame(
    frame: npt.ArrayLike, modality: str, config: ImagingConfig = DEFAULT_CONFIG
) -> FrameAnalysis:
    """Analyse one 2-D frame in modality units (HU for CT) of the given DICOM modality.

    Raises ``ValueError`` for anything but a finite 2-D array of at least 2x2 pixels; any such
    array, constant ones included, gets an answer.

    >>> a = analyze_frame(np.full((8, 8), 100.0, np.float32), "MR")
    >>> a.edge_bbox, int(a.edge_map.max()), bool(np.isfinite(a.features).all())
    (None, 0, True)
    """
    return analyze_frame_stages(frame, modality, config)[0]
