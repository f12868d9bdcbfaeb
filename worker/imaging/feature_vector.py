"""The per-frame feature vector: one fixed-length, documented float32 vector (the SVM's input).

The order of :data:`FEATURE_NAMES` is frozen: models are trained on it. Append new features at
the end (and retrain); never reorder or remove.

========================  ==================================================================
name                      meaning (units)
========================  ==================================================================
int_mean, int_std         mean and standard deviation of the raw frame (modality units, e.g.
                          HU), over every pixel
int_p01, int_p50, int_p99 1st, 50th, 99th percentiles of the raw frame (modality units)
int_skewness              sample skewness of the raw frame (dimensionless; 0 if constant)
int_kurtosis              excess kurtosis of the raw frame (dimensionless; 0 if constant)
win_entropy               Shannon entropy (bits, 0..4) of the 16-level window histogram over
                          the texture rows (the marginal of the 0-degree matrix below)
grad_mean, grad_std       mean and standard deviation of the Sobel gradient magnitude of the
                          denoised frame (modality units per pixel), over every pixel
grad_p50, grad_p90,       50th, 90th, 99th percentiles of that magnitude
grad_p99
edge_density              fraction of pixels on a Canny edge (0..1)
edge_strength_mean        mean gradient magnitude on Canny edge pixels (0 without edges)
edge_segments             8-connected Canny edge components per 10,000 pixels
orient_000 ... orient_158 histogram of gradient orientation on Canny edge pixels, weighted by
                          magnitude, normalised to sum 1 (all 0 without edges). Orientation
                          is atan2(gy, gx) folded into [0, 180) degrees, x to the right and y
                          down; the 8 bins are 22.5 degrees wide and centred on 0, 22.5, ...,
                          157.5, so axis-aligned edges sit mid-bin rather than on a boundary
glcm_contrast,            grey-level co-occurrence texture of the window quantised to 16
glcm_homogeneity,         levels (round(15 w)), distance 1, symmetric and normalised,
glcm_energy,              averaged over the 0 and 90 degree directions; the definitions of
glcm_correlation          skimage.feature.graycoprops (correlation is 1 for a constant
                          window). Pairs start on every k-th row, the texture rows, with
                          k = ceil(pixels / 65536) (k = 4 at 512x512), which bounds the cost
========================  ==================================================================

Means and standard deviations use every pixel (double-precision sums). Percentiles (intensity
and gradient) and the higher moments are computed on a deterministic
strided subsample of at most ~8k pixels (see :mod:`worker.imaging.stats`): exact and repeatable
for a given frame, and cheap. The vector depends only on the frame, never on batch order.

>>> len(FEATURE_NAMES), FEATURE_NAMES[0], FEATURE_NAMES[-1]
(28, 'int_mean', 'glcm_correlation')
"""

from __future__ import annotations

import math
from typing import Final, cast

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.edges import EdgeRegions, Gradient, edge_indices, edge_regions
from worker.imaging.kernels import orientation_sums, texture_pair_counts
from worker.imaging.reductions import shape_moments, sum_and_squares, texture_summary
from worker.imaging.stats import quantiles, subsample

ORIENTATION_BINS: Final = 8
GLCM_LEVELS: Final = 16
#: The gradient-magnitude percentiles in the vector (grad_p50, grad_p90, grad_p99).
GRADIENT_PERCENTILES: Final = (50.0, 90.0, 99.0)
#: Features in gradient-magnitude units (modality units per pixel).
GRADIENT_FEATURES: Final = (
    "grad_mean",
    "grad_std",
    "grad_p50",
    "grad_p90",
    "grad_p99",
    "edge_strength_mean",
)
_F32_MAX: Final = float(np.finfo(np.float32).max)
#: Co-occurrence pairs per direction the texture rows aim at (see the table above).
TEXTURE_PAIRS: Final = 65536

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "int_mean",
    "int_std",
    "int_p01",
    "int_p50",
    "int_p99",
    "int_skewness",
    "int_kurtosis",
    "win_entropy",
    "grad_mean",
    "grad_std",
    "grad_p50",
    "grad_p90",
    "grad_p99",
    "edge_density",
    "edge_strength_mean",
    "edge_segments",
    "orient_000",
    "orient_022",
    "orient_045",
    "orient_068",
    "orient_090",
    "orient_112",
    "orient_135",
    "orient_158",
    "glcm_contrast",
    "glcm_homogeneity",
    "glcm_energy",
    "glcm_correlation",
)
_GRADIENT_SLOTS: Final = [FEATURE_NAMES.index(n) for n in GRADIENT_FEATURES]


def features(
    frame: npt.NDArray[np.float32],
    windowed: npt.NDArray[np.float32],
    gradient: Gradient,
    edge_map: npt.NDArray[np.uint8],
    *,
    indices: npt.NDArray[np.intp] | None = None,
    regions: EdgeRegions | None = None,
    gradient_percentiles: tuple[float, float, float] | None = None,
    gradient_scale: float = 1.0,
    frame_sums: tuple[float, float] | None = None,
) -> npt.NDArray[np.float32]:
    """The :data:`FEATURE_NAMES` vector (float32) of one frame.

    ``frame`` is the raw frame in modality units, ``windowed`` its modality-default window,
    ``gradient`` the Sobel gradient of the denoised frame and ``edge_map`` its Canny edges.
    ``indices`` and ``regions`` (from :func:`~worker.imaging.edges.edge_indices` and
    :func:`~worker.imaging.edges.edge_regions`) and ``gradient_percentiles`` (the magnitude's
    50th, 90th and 99th on the :mod:`stats` subsample) and ``frame_sums`` (``frame``'s
    :func:`~worker.imaging.reductions.sum_and_squares`) may be passed to avoid recomputing them.
    ``gradient_scale`` multiplies the gradient-valued features (:data:`GRADIENT_FEATURES`), for a
    gradient computed on a scaled copy of the frame. Values beyond the float32 range saturate.

    >>> from worker.imaging.edges import canny_auto, sobel
    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 100.0
    >>> g = sobel(img); e, _ = canny_auto(g)
    >>> v = features(img, img / 100.0, g, e)
    >>> v.dtype, v.shape, float(v[FEATURE_NAMES.index("int_mean")])
    (dtype('float32'), (28,), 25.0)
    """
    idx = edge_indices(edge_map) if indices is None else indices
    reg = edge_regions(edge_map, gradient.magnitude, idx) if regions is None else regions
    n_pixels = frame.size
    out = np.zeros(len(FEATURE_NAMES), np.float64)

    sample = subsample(frame)
    out[0:2] = mean_std(frame, frame_sums)
    out[2:5] = quantiles(sample, (1.0, 50.0, 99.0))
    out[5:7] = shape_moments(sample)

    # Entropy and texture straight from the pair counts (one compiled summary of both).
    entropy, *texture = texture_summary(
        *texture_pair_counts(windowed, texture_row_step(windowed.shape))
    )
    out[7] = entropy

    mag = gradient.magnitude
    out[8:10] = mean_std(mag)
    if gradient_percentiles is None:
        out[10:13] = quantiles(subsample(mag), GRADIENT_PERCENTILES)
    else:
        out[10:13] = gradient_percentiles

    if idx.size:
        mags = mag.ravel()[idx]
        out[13] = idx.size / n_pixels
        out[14] = float(mags.mean(dtype=np.float64))
        out[15] = reg.components * 1e4 / n_pixels
        out[16:24] = _orientation_histogram(
            gradient.gx.ravel()[idx], gradient.gy.ravel()[idx], mags
        )
    out[24:28] = texture
    if gradient_scale != 1.0:
        out[_GRADIENT_SLOTS] *= gradient_scale
    np.clip(out, -_F32_MAX, _F32_MAX, out=out)  # a float64 -> float32 overflow would give inf
    return out.astype(np.float32)


def mean_std(
    a: npt.NDArray[np.float32], sums: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Mean and (population) standard deviation of every element, summed in double precision.

    One vectorised pass for the sum and the sum of squares
    (:func:`~worker.imaging.reductions.sum_and_squares`; ``sums`` when the caller has them
    already) costs a tenth of ``cv2.meanStdDev``; in double precision the cancellation in
    E[x²] - E[x]² is harmless for image data.

    >>> mean_std(np.float32([[1, 2], [3, 4]]))
    (2.5, 1.118033988749895)
    """
    n = a.size
    total, squares = sum_and_squares(a) if sums is None else sums
    mean = total / n
    var = squares / n - mean * mean
    return mean, math.sqrt(max(var, 0.0))


def quantise(windowed: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The 16-level image used for entropy and texture: ``round(15 w)``, w clipped to [0, 1].

    >>> quantise(np.float32([[0.0, 0.5, 0.99, 1.0, 2.0]])).tolist()
    [[0, 8, 15, 15, 15]]
    """
    return _quantise_unit(np.clip(np.asarray(windowed, np.float32), 0.0, 1.0))


def _quantise_unit(windowed: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    # Values must already lie in [0, 1] (convertScaleAbs would fold negatives up).
    q = cv2.convertScaleAbs(windowed, alpha=float(GLCM_LEVELS - 1))  # rounds, saturates: 1 pass
    return cast("npt.NDArray[np.uint8]", q)


def texture_row_step(shape: tuple[int, ...]) -> int:
    """Row step of the texture rows: ``ceil(pixels / TEXTURE_PAIRS)``.

    >>> texture_row_step((512, 512)), texture_row_step((64, 64))
    (4, 1)
    """
    return max(1, math.ceil(math.prod(shape) / TEXTURE_PAIRS))


def cooccurrence(
    q: npt.NDArray[np.uint8], row_step: int = 1
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Symmetric, normalised 16x16 co-occurrence matrices at distance 1, 0 and 90 degrees.

    Pairs start on rows ``0, row_step, 2*row_step, ...``; with ``row_step`` 1 these are
    ``skimage.feature.graycomatrix(q, [1], [0, pi/2], 16, symmetric=True, normed=True)``. A
    direction with no pairs (one row or column) gives all zeros.

    >>> p0, p90 = cooccurrence(np.uint8([[0, 1], [0, 1]]))
    >>> float(p0[0, 1]), float(p90[0, 0]), float(p90[1, 1])
    (0.5, 0.5, 0.5)
    """
    horizontal, vertical = (
        _glcm(counts) if counts.any() else np.zeros((GLCM_LEVELS, GLCM_LEVELS))
        for counts in pair_counts(q, row_step)
    )
    return horizontal, vertical


def pair_counts(
    q: npt.NDArray[np.uint8], row_step: int = 1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The pair counts behind :func:`cooccurrence` (256 each: first level * 16 + second).

    >>> h, v = pair_counts(np.uint8([[0, 1], [0, 1]]))
    >>> int(h[0 * 16 + 1]), int(v[0]), int(v[1 * 16 + 1])
    (2, 1, 1)
    """
    q = np.ascontiguousarray(q, np.uint8)
    # Pair code i*16 + j fits one byte, so OpenCV's fast 8-bit histogram counts the pairs.
    shifted = np.left_shift(q[::row_step], 4)
    vertical_rows = (q.shape[0] - 1 + row_step - 1) // row_step  # starts r with r + 1 < height
    pairs = (
        (shifted[:, :-1], q[::row_step, 1:]),
        (shifted[:vertical_rows], q[1::row_step]),
    )
    out = []
    for first, second in pairs:
        if first.size == 0:
            out.append(np.zeros(GLCM_LEVELS * GLCM_LEVELS, np.int64))
            continue
        counts = cv2.calcHist([cv2.add(first, second)], [0], None, [256], [0, 256])
        out.append(np.asarray(counts, np.int64).ravel())
    return out[0], out[1]


def _glcm(counts: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    """Symmetric, normalised 16x16 matrix from 256 pair counts (first level * 16 + second)."""
    glcm = np.asarray(counts, np.float64).reshape(GLCM_LEVELS, GLCM_LEVELS)
    glcm += glcm.T
    glcm /= glcm.sum()
    return glcm


def _orientation_histogram(
    gx: npt.NDArray[np.float32], gy: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    # The bins of edges.orientation (22.5 degrees wide, centred on 0, 22.5, ...), summed by a
    # compiled loop: a dozen numpy calls on a few thousand edge pixels cost ten times more.
    hist = orientation_sums(gx, gy, weights, ORIENTATION_BINS)
    total = float(hist.sum())
    return np.asarray(hist / total if total > 0 else hist, dtype=np.float64)


def glcm_props(q: npt.NDArray[np.uint8], row_step: int = 1) -> tuple[float, float, float, float]:
    """Contrast, homogeneity, energy and correlation of a 16-level image (see module doc).

    With ``row_step`` 1, ``skimage.feature.graycoprops`` of :func:`cooccurrence`'s matrices,
    averaged over the two angles.

    >>> q = np.tile(np.uint8([0, 15]), (4, 2))
    >>> [round(v, 3) for v in glcm_props(q)]
    [112.5, 0.502, 0.707, 0.0]
    """
    _, contrast, homogeneity, energy, correlation = texture_summary(*pair_counts(q, row_step))
    return contrast, homogeneity, energy, correlation
