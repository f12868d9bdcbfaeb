"""The feature vector's small reductions, compiled: sums, shape moments, texture summaries.

Each replaced a handful of numpy or OpenCV calls whose cost was mostly passes and call
overhead: the frame's sum and sum of squares in one vectorised pass instead of two OpenCV
reductions (about 0.03 ms against 0.07 ms a 512x512 slice here), the subsample's skewness and
kurtosis without float64 temporaries, and the four texture properties and the window entropy
straight from the pair counts (a few microseconds, against 0.1 ms of numpy calls on 16x16
matrices). Values match the numpy formulations kept in :mod:`worker.imaging.feature_vector` to
the last few bits (sums are reassociated: see :func:`~worker.imaging.compiled.compile_loop`).

>>> import numpy as np
>>> sum_and_squares(np.float32([[1, 2], [3, 4]]))
(10.0, 30.0)
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt

from worker.imaging.compiled import Kernel, compile_loop

LEVELS = 16


def _sum_and_squares(a: npt.NDArray[np.float32]) -> tuple[float, float]:
    flat = a.ravel()
    total = 0.0
    squares = 0.0
    for i in range(flat.size):
        x = np.float64(flat[i])
        total += x
        squares += x * x
    return total, squares


def _shape_moments(sample: npt.NDArray[np.float32]) -> tuple[float, float]:
    n = sample.size
    total = 0.0
    for i in range(n):
        total += np.float64(sample[i])
    mean = total / n
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    for i in range(n):
        d = np.float64(sample[i]) - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
    var = m2 / n
    if not var > 0:
        return 0.0, 0.0
    return (m3 / n) / var**1.5, (m4 / n) / (var * var) - 3.0


def _texture_summary(
    horizontal: npt.NDArray[np.int64], vertical: npt.NDArray[np.int64]
) -> tuple[float, float, float, float, float]:
    entropy = 0.0
    props = np.zeros(4)
    for angle in range(2):
        counts = horizontal if angle == 0 else vertical
        # Symmetric, normalised matrix: (C + C^T) / sum.
        glcm = np.empty((LEVELS, LEVELS))
        total = 0.0
        for i in range(LEVELS):
            for j in range(LEVELS):
                glcm[i, j] = np.float64(counts[i * LEVELS + j] + counts[j * LEVELS + i])
                total += glcm[i, j]
        if total == 0:  # no pairs: a flat, perfectly homogeneous, fully correlated texture
            props += np.array([0.0, 1.0, 1.0, 1.0])
            continue
        glcm /= total
        if angle == 0:  # entropy of the 0-degree matrix's marginal
            for i in range(LEVELS):
                p = 0.0
                for j in range(LEVELS):
                    p += glcm[i, j]
                if p > 0:
                    entropy -= p * math.log2(p)
        mu = 0.0
        for i in range(LEVELS):
            for j in range(LEVELS):
                mu += i * glcm[i, j]
        contrast = homogeneity = energy = var = cov = 0.0
        for i in range(LEVELS):
            for j in range(LEVELS):
                g = glcm[i, j]
                d2 = np.float64((i - j) * (i - j))
                contrast += g * d2
                homogeneity += g / (1.0 + d2)
                energy += g * g
                var += (i - mu) * (i - mu) * g
                cov += (i - mu) * (j - mu) * g
        props[0] += contrast
        props[1] += homogeneity
        props[2] += math.sqrt(energy)
        props[3] += 1.0 if math.sqrt(var) < 1e-15 else cov / var
    props /= 2.0
    return entropy + 0.0, props[0], props[1], props[2], props[3]


_compiled_sums: Kernel = compile_loop(_sum_and_squares, reassociate=True)
_compiled_moments: Kernel = compile_loop(_shape_moments, reassociate=True)
_compiled_texture: Kernel = compile_loop(_texture_summary)


def sum_and_squares(a: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The sum and the sum of squares of every element of a float32 array, in double precision.

    Either is NaN or infinite exactly when some element is: finite float32 values cannot
    overflow a double.

    >>> sum_and_squares(np.float32([1.5, np.nan]))[0]
    nan
    """
    total, squares = _compiled_sums(np.ascontiguousarray(a, np.float32))
    return float(total), float(squares)


def shape_moments(sample: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Sample skewness and excess kurtosis (population moments; both 0 for a constant sample).

    >>> [round(v, 6) for v in shape_moments(np.float32([0, 0, 0, 1]))]
    [1.154701, -0.666667]
    """
    skew, kurt = _compiled_moments(np.ascontiguousarray(sample, np.float32).ravel())
    return float(skew), float(kurt)


def texture_summary(
    horizontal: npt.NDArray[np.int64], vertical: npt.NDArray[np.int64]
) -> tuple[float, float, float, float, float]:
    """Window entropy and the four texture properties from 0 and 90 degree pair counts.

    The counts are :func:`~worker.imaging.kernels.texture_pair_counts`'s (256 each, first
    level * 16 + second). Returns the entropy in bits of the symmetric, normalised 0-degree
    matrix's marginal, then contrast, homogeneity, energy and correlation averaged over the two
    matrices, as :mod:`worker.imaging.feature_vector` defines them.

    >>> h = np.zeros(256, np.int64); h[0 * 16 + 15] = 2
    >>> [round(v, 3) for v in texture_summary(h, np.zeros(256, np.int64))]
    [1.0, 112.5, 0.502, 0.854, 0.0]
    """
    counts = [np.ascontiguousarray(c, np.int64).ravel() for c in (horizontal, vertical)]
    if any(c.size != LEVELS * LEVELS for c in counts):
        raise ValueError(f"expected {LEVELS * LEVELS} pair counts per angle")
    result = _compiled_texture(*counts)
    return cast("tuple[float, float, float, float, float]", tuple(float(v) for v in result))


def warm_up() -> None:
    """Compile (or load from the cache) these loops now.

    >>> warm_up()
    """
    zeros = np.zeros((2, 2), np.float32)
    sum_and_squares(zeros)
    shape_moments(zeros.ravel())
    texture_summary(np.zeros(256, np.int64), np.zeros(256, np.int64))
