"""Per-pixel loops compiled with numba: the interpolated Canny, and the texture pair counts.

Why compiled: numpy and OpenCV have no single call for either, and composing them from
vectorised calls costs several passes and temporaries over the frame.

**Canny** (:func:`interpolated_canny`: suppression, hysteresis, regions). In numpy the steps
were a dozen gathers and temporaries over the ~20% of pixels above the low threshold, plus a
full-frame ``cv2.connectedComponents``: 4-5 ms a 512x512 slice with 25 HU of noise, against
0.75 ms for OpenCV's own Canny. Compiled loops do the same work in about 1.1 ms, without
holding the GIL, so the Kafka threads run beside it. Results are identical, pixel for pixel
and box for box, to the numpy formulation kept in ``tests/unit/imaging/canny_reference.py``
(checked there on phantoms, noise and the pydicom test images): every comparison and
interpolation is done in float32 in the same order, and region totals are float64 sums in
raster order, as ``np.bincount`` adds them.

**Texture pairs** (:func:`texture_pair_counts`). Quantising the whole window to 16 levels and
counting pairs with ``cv2.calcHist`` took about 0.44 ms a 512x512 slice; one loop over the
texture rows, quantising only the rows it reads (vectorised), gives the same integer counts in
0.15 ms.

Compiled as :mod:`worker.imaging.compiled` says (cached on disk where it can be; about 3 s
per process where it cannot): :func:`warm_up` does that at start, not on the first event, for
these loops and those of :mod:`worker.imaging.reductions`.

>>> import numpy as np
>>> from worker.imaging.edges import sobel
>>> img = np.zeros((16, 16), np.float32); img[4:12, 4:12] = 100.0
>>> g = sobel(img)
>>> edges, idx, count, bbox = interpolated_canny(g.gx, g.gy, g.magnitude, 100.0, 200.0)
>>> int(edges.max()), count, bbox, int(idx.size) == int((edges > 0).sum())
(255, 1, (3, 3, 10, 10), True)
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from worker.imaging import reductions
from worker.imaging.compiled import Kernel, compile_loop


def _kernel(
    gx: npt.NDArray[np.float32],
    gy: npt.NDArray[np.float32],
    mag: npt.NDArray[np.float32],
    low: np.float32,
    high: np.float32,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp], int, int, int, int, int]:
    """Edge map, edge indices, seeded component count, and the best component's extent."""
    h, w = mag.shape
    n = h * w
    flat = mag.ravel()
    fgx = gx.ravel()
    fgy = gy.ravel()
    # Candidates (>= low, outermost ring excluded) first, without a branch per pixel: a
    # mispredicted branch on noisy frames cost more than the suppression itself.
    cand = np.empty(n, np.intp)
    nc = 0
    for y in range(1, h - 1):
        row = y * w
        for x in range(1, w - 1):
            cand[nc] = row + x
            nc += flat[row + x] >= low
    # Suppression: compare with the magnitude bilinearly interpolated one step along the
    # gradient, both ways (dominant axis step, then towards the diagonal by minor/major).
    state = np.zeros(n, np.uint8)  # 1: survived suppression, 2: in a seeded component
    surv = np.empty(nc + 1, np.intp)
    ns = 0
    for k in range(nc):
        i = cand[k]
        m = flat[i]
        fx = fgx[i]
        fy = fgy[i]
        ax = abs(fx)
        ay = abs(fy)
        sx = 1 if fx >= 0 else -1
        sy = w if fy >= 0 else -w
        axial = sy if ay >= ax else sx
        diag = sx + sy
        frac = min(ax, ay) / max(ax, ay)
        a = flat[i + axial]
        b = flat[i + diag]
        c = flat[i - axial]
        d = flat[i - diag]
        keep = (m >= a + frac * (b - a)) & (m >= c + frac * (d - c))
        state[i] = keep
        surv[ns] = i
        ns += keep
    # Hysteresis: flood the 8-connected survivors from each seed (>= high) in raster order.
    label = np.zeros(n, np.int32)
    stack = np.empty(ns + 1, np.intp)
    first = np.empty(ns + 1, np.intp)  # each component's first pixel in raster order
    nlab = 0
    for k in range(ns):
        s = surv[k]
        if state[s] != 1 or not flat[s] >= high:
            continue
        nlab += 1
        state[s] = 2
        label[s] = nlab
        lowest = s
        stack[0] = s
        top = 1
        while top > 0:
            top -= 1
            p = stack[top]
            lowest = min(lowest, p)
            for step in (-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1):
                q = p + step
                if state[q] == 1:
                    state[q] = 2
                    label[q] = nlab
                    stack[top] = q
                    top += 1
        first[nlab] = lowest
    totals = np.zeros(nlab + 1, np.float64)
    edges = np.zeros((h, w), np.uint8)
    flat_edges = edges.ravel()
    out = np.empty(ns + 1, np.intp)
    nf = 0
    for k in range(ns):
        s = surv[k]
        lab = label[s]
        if lab > 0:
            totals[lab] += np.float64(flat[s])
            flat_edges[s] = 255
            out[nf] = s
            nf += 1
    # The strongest component; a tie goes to the one whose first pixel comes first.
    best = 0
    for lab in range(1, nlab + 1):
        if (
            best == 0
            or totals[lab] > totals[best]
            or (totals[lab] == totals[best] and first[lab] < first[best])
        ):
            best = lab
    x0, y0, x1, y1 = w, h, -1, -1
    for k in range(nf):
        s = out[k]
        if label[s] == best:
            yy = s // w
            xx = s - yy * w
            x0, x1, y0, y1 = min(x0, xx), max(x1, xx), min(y0, yy), max(y1, yy)
    return edges, out[:nf].copy(), nlab, x0, y0, x1 - x0 + 1, y1 - y0 + 1


def _pair_counts(
    windowed: npt.NDArray[np.float32], row_step: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Counts of level pairs (first * 16 + second) at 0 and 90 degrees on the texture rows."""
    h, w = windowed.shape
    # Four copies of each histogram (0..1023 horizontal, 1024..2047 vertical), taken in turn:
    # a texture has few distinct pairs, and adding into one counter over and over waits on the
    # previous add each time. Unsigned indices spare numba's negative-index checks.
    hist = np.zeros(2048, np.uint32)
    top = np.empty(w, np.uint8)
    code = np.empty(w, np.uint8)
    scale = np.float32(15.0)
    zero = np.float32(0.0)
    fifteen = np.float32(15.0)
    # x + 2**23 - 2**23 rounds a float32 in [0, 2**23) to an integer, half to even (the
    # default rounding mode), as np.rint and cv2.convertScaleAbs do, and it vectorises.
    magic = np.float32(8388608.0)
    for r in range(0, h, row_step):
        # Levels are clamped to 0..15 (NaN to 0), as quantise() clips first: values outside
        # [0, 1] must never index outside the histogram.
        src = windowed[r]
        for c in range(w):
            x = src[c] * scale
            x = x if x > zero else zero
            x = x if x < fifteen else fifteen
            top[c] = np.uint8(np.int32((x + magic) - magic))
        for c in range(w - 1):
            code[c] = (top[c] << 4) | top[c + 1]
        for c in range(w - 1):
            hist[np.uintp(c & 3) * np.uintp(256) + np.uintp(code[c])] += np.uint32(1)
        if r + 1 < h:
            src = windowed[r + 1]
            for c in range(w):
                x = src[c] * scale
                x = x if x > zero else zero
                x = x if x < fifteen else fifteen
                code[c] = (top[c] << 4) | np.uint8(np.int32((x + magic) - magic))
            for c in range(w):
                hist[np.uintp(1024 + (c & 3) * 256) + np.uintp(code[c])] += np.uint32(1)
    horizontal = hist[:1024].reshape(4, 256).sum(axis=0).astype(np.int64)
    vertical = hist[1024:].reshape(4, 256).sum(axis=0).astype(np.int64)
    return horizontal, vertical


def _orientation_sums(
    radians: npt.NDArray[np.float32], weights: npt.NDArray[np.float32], bins: int
) -> npt.NDArray[np.float64]:
    """Weights summed per orientation bin, the bins centred on 0, 180/bins, ... degrees."""
    out = np.zeros(bins, np.float64)
    to_degrees = np.float32(np.float32(180.0) / np.float32(np.pi))  # as np.degrees on float32
    half = np.float64(90.0 / bins)
    width = 2.0 * half
    for k in range(radians.size):
        deg = radians[k] * to_degrees
        # atan2 lies in [-pi, pi], so np.mod(deg, 180) is deg itself, plus 180 when negative,
        # or 0 at +-180: branches instead of two fmod calls (five times faster, same bins).
        if deg >= np.float32(180.0) or deg <= np.float32(-180.0):
            deg = deg * np.float32(0.0)
        if deg < 0:
            deg += np.float32(180.0)
        if deg >= 180.0:  # adding 180 can round a tiny negative angle up to 180
            deg -= np.float32(180.0)
        # np.floor_divide's (and Python's) float floor division, for positive operands: the
        # quotient's floor, one less where the division rounded up to a whole number.
        shifted = np.float64(deg) + half
        whole = np.floor(shifted / width)
        if whole * width > shifted:
            whole -= 1.0
        out[int(whole) % bins] += np.float64(weights[k])
    return out


def _same_2d(*arrays: npt.NDArray[Any]) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"expected 2-D arrays of one shape, got {sorted(shapes)}")


_compiled: Kernel = compile_loop(_kernel)
_compiled_pairs: Kernel = compile_loop(_pair_counts)
_compiled_orientations: Kernel = compile_loop(_orientation_sums)


def interpolated_canny(
    gx: npt.NDArray[np.float32],
    gy: npt.NDArray[np.float32],
    mag: npt.NDArray[np.float32],
    low: float,
    high: float,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp], int, tuple[int, int, int, int] | None]:
    """Canny edges (0/255), their flat indices (ascending), seeded component count, best box.

    ``low`` and ``high`` are compared in float32, as numpy compares a float32 array with a
    ``np.float32`` scalar; the box is ``(x, y, width, height)`` of the component with the
    largest total magnitude, ``None`` when there are no edges. Example in the module docstring.
    """
    arrays = [np.ascontiguousarray(a, np.float32) for a in (gx, gy, mag)]
    _same_2d(*arrays)
    edges, idx, count, x, y, width, height = _compiled(*arrays, np.float32(low), np.float32(high))
    bbox = (int(x), int(y), int(width), int(height)) if count else None
    return (
        cast("npt.NDArray[np.uint8]", edges),
        cast("npt.NDArray[np.intp]", idx),
        int(count),
        bbox,
    )


def texture_pair_counts(
    windowed: npt.NDArray[np.float32], row_step: int = 1
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pair counts (256 each: first level * 16 + second) at distance 1, 0 and 90 degrees.

    ``windowed`` holds values in [0, 1], quantised to ``round(15 w)`` (half to even, as
    ``cv2.convertScaleAbs``; values outside are clipped first, as
    :func:`~worker.imaging.feature_vector.quantise` does, and NaN counts as 0); pairs start on
    rows ``0, row_step, ...`` (the vertical pair of the last row only when a row follows it).
    Not symmetrised or normalised.

    >>> h, v = texture_pair_counts(np.float32([[0, 1], [0, 1]]))
    >>> int(h[0 * 16 + 15]), int(v[0]), int(v[15 * 16 + 15]), int(h.sum()), int(v.sum())
    (2, 1, 1, 2, 2)
    """
    if row_step < 1:
        raise ValueError(f"row_step must be at least 1, got {row_step}")
    windowed = np.ascontiguousarray(windowed, np.float32)
    _same_2d(windowed)
    horizontal, vertical = _compiled_pairs(windowed, row_step)
    return (
        cast("npt.NDArray[np.int64]", horizontal),
        cast("npt.NDArray[np.int64]", vertical),
    )


def orientation_sums(
    gx: npt.NDArray[np.float32],
    gy: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32],
    bins: int,
) -> npt.NDArray[np.float64]:
    """Sum of ``weights`` per bin of the unsigned orientation ``atan2(gy, gx)`` in [0, 180).

    Bin ``b`` is centred on ``b * 180 / bins`` degrees; the sums are float64 in input order, as
    ``np.bincount(bins, weights.astype(float64))`` adds them. Same bins as
    :func:`~worker.imaging.edges.orientation` followed by ``(deg + half) // width % bins``:
    ``np.arctan2`` runs here, the folding and binning in a compiled loop.

    >>> orientation_sums(np.float32([1, 0, -1]), np.float32([0, 1, 1]), np.float32([1, 2, 3]), 4)
    array([1., 0., 2., 3.])
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    radians = np.ascontiguousarray(
        np.arctan2(np.asarray(gy, np.float32), np.asarray(gx, np.float32)), np.float32
    ).ravel()
    flat_weights = np.ascontiguousarray(weights, np.float32).ravel()
    if radians.size != flat_weights.size:
        raise ValueError(f"{radians.size} gradients but {flat_weights.size} weights")
    sums = _compiled_orientations(radians, flat_weights, bins)
    return cast("npt.NDArray[np.float64]", sums)


def warm_up() -> None:
    """Compile (or load from the cache) now, so the first event does not wait for it.

    >>> warm_up()
    """
    zeros = np.zeros((3, 3), np.float32)
    interpolated_canny(zeros, zeros, zeros, 1.0, 2.0)
    texture_pair_counts(zeros)
    orientation_sums(zeros, zeros, zeros, 8)
    reductions.warm_up()
