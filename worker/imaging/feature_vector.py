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
win_entropy               Shannon entropy (bits, 0..4) of the 16-level histogram of the
                          modality-default window
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
glcm_homogeneity,         levels (floor(16 w), clipped to 15), distance 1, symmetric and
glcm_energy,              normalised, averaged over the 0 and 90 degree directions; the same
glcm_correlation          definitions as skimage.feature.graycoprops (correlation is 1 for a
                          constant window)
========================  ==================================================================

Percentiles (intensity and gradient) and the higher moments are computed on a deterministic
strided subsample of at most ~16k pixels (see :mod:`worker.imaging.stats`): exact and repeatable
for a given frame, and cheap. The vector depends only on the frame, never on batch order.

>>> len(FEATURE_NAMES), FEATURE_NAMES[0], FEATURE_NAMES[-1]
(28, 'int_mean', 'glcm_correlation')
"""

from __future__ import annotations

import math
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.edges import EdgeRegions, Gradient, edge_indices, edge_regions, orientation
from worker.imaging.stats import quantiles, subsample

ORIENTATION_BINS: Final = 8
GLCM_LEVELS: Final = 16

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


def features(
    frame: npt.NDArray[np.float32],
    windowed: npt.NDArray[np.float32],
    gradient: Gradient,
    edge_map: npt.NDArray[np.uint8],
    *,
    indices: npt.NDArray[np.intp] | None = None,
    regions: EdgeRegions | None = None,
) -> npt.NDArray[np.float32]:
    """The :data:`FEATURE_NAMES` vector (float32) of one frame.

    ``frame`` is the raw frame in modality units, ``windowed`` its modality-default window,
    ``gradient`` the Sobel gradient of the denoised frame and ``edge_map`` its Canny edges.
    ``indices`` and ``regions`` (from :func:`~worker.imaging.edges.edge_indices` and
    :func:`~worker.imaging.edges.edge_regions`) may be passed to avoid recomputing them.

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

    mean, std = cv2.meanStdDev(frame)
    sample = subsample(frame)
    p01, p50, p99 = quantiles(sample, (1.0, 50.0, 99.0))
    skew, kurt = _shape_moments(sample)
    out[0:8] = (mean[0, 0], std[0, 0], p01, p50, p99, skew, kurt, 0.0)

    q = _quantise(windowed)
    out[7] = _entropy_bits(q)

    gmean, gstd = cv2.meanStdDev(gradient.magnitude)
    out[8:13] = (gmean[0, 0], gstd[0, 0], *quantiles(subsample(gradient.magnitude), (50, 90, 99)))

    if idx.size:
        mags = gradient.magnitude.ravel()[idx]
        out[13] = idx.size / n_pixels
        out[14] = float(mags.mean(dtype=np.float64))
        out[15] = reg.components * 1e4 / n_pixels
        out[16:24] = _orientation_histogram(
            gradient.gx.ravel()[idx], gradient.gy.ravel()[idx], mags
        )
    out[24:28] = glcm_props(q)
    return out.astype(np.float32)


def _shape_moments(sample: npt.NDArray[np.float32]) -> tuple[float, float]:
    x = sample.astype(np.float64)
    x -= x.mean()
    var = float(np.mean(x * x))
    if not var > 0:
        return 0.0, 0.0
    x2 = x * x
    skew = float(np.mean(x2 * x)) / var**1.5
    kurt = float(np.mean(x2 * x2)) / (var * var) - 3.0
    return skew, kurt


def _quantise(windowed: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    # floor(16 w): truncation of a non-negative float is floor; 1.0 maps to 16, clipped to 15.
    q = (windowed * np.float32(GLCM_LEVELS)).astype(np.uint8)
    np.minimum(q, GLCM_LEVELS - 1, out=q)
    return q


def quantise(windowed: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The 16-level image used for entropy and texture: ``min(floor(16 w), 15)``.

    >>> quantise(np.float32([[0.0, 0.5, 0.99, 1.0]])).tolist()
    [[0, 8, 15, 15]]
    """
    return _quantise(np.clip(np.asarray(windowed, np.float32), 0.0, 1.0))


def _entropy_bits(q: npt.NDArray[np.uint8]) -> float:
    hist = cv2.calcHist([q], [0], None, [GLCM_LEVELS], [0, GLCM_LEVELS]).ravel()
    p = hist[hist > 0].astype(np.float64) / q.size
    return float(-(p * np.log2(p)).sum())


def _orientation_histogram(
    gx: npt.NDArray[np.float32], gy: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    half_bin = 90.0 / ORIENTATION_BINS
    deg = orientation(gx, gy).astype(np.float64)
    bins = ((deg + half_bin) // (2 * half_bin)).astype(np.intp) % ORIENTATION_BINS
    hist = np.bincount(bins, weights=weights.astype(np.float64), minlength=ORIENTATION_BINS)
    total = float(hist.sum())
    return np.asarray(hist / total if total > 0 else hist, dtype=np.float64)


def glcm_props(q: npt.NDArray[np.uint8]) -> tuple[float, float, float, float]:
    """Contrast, homogeneity, energy and correlation of a 16-level image (see module doc).

    Matches ``skimage.feature.graycoprops`` on ``graycomatrix(q, [1], [0, pi/2], 16,
    symmetric=True, normed=True)``, averaged over the two angles.

    >>> q = np.tile(np.uint8([0, 15]), (4, 2))
    >>> [round(v, 3) for v in glcm_props(q)]
    [112.5, 0.502, 0.707, 0.0]
    """
    q = np.ascontiguousarray(q, np.uint8)
    shifted = q << 4  # pair code i*16 + j fits a byte, so OpenCV's fast uint8 histogram applies
    pairs = (
        cv2.add(shifted[:, :-1], q[:, 1:]),  # 0 degrees: right-hand neighbour
        cv2.add(shifted[:-1, :], q[1:, :]),  # 90 degrees: neighbour above/below
    )
    levels = np.arange(GLCM_LEVELS, dtype=np.float64)
    i, j = np.meshgrid(levels, levels, indexing="ij")
    d2 = (i - j) ** 2
    acc = np.zeros(4)
    for code in pairs:
        if code.size == 0:  # a single row or column has no pairs in that direction
            acc += (0.0, 1.0, 1.0, 1.0)
            continue
        counts = cv2.calcHist([code], [0], None, [256], [0, 256]).reshape(16, 16)
        glcm = counts.astype(np.float64)
        glcm += glcm.T
        glcm /= glcm.sum()
        mu = float((i * glcm).sum())  # symmetric: row and column marginals are equal
        var = float(((i - mu) ** 2 * glcm).sum())
        cov = float(((i - mu) * (j - mu) * glcm).sum())
        corr = 1.0 if math.sqrt(var) < 1e-15 else cov / var
        acc += (
            float((glcm * d2).sum()),
            float((glcm / (1.0 + d2)).sum()),
            math.sqrt(float((glcm * glcm).sum())),
            corr,
        )
    c, h, e, r = acc / len(pairs)
    return float(c), float(h), float(e), float(r)
