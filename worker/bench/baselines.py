"""The two yardsticks of ``scanstream bench --stage imaging``: per-stage floors and the recipe.

Both start, as our stage does, from a slice's stored uint16 pixels and time each step in
milliseconds with whatever OpenCV thread count the caller set (the bench sets one).

**Floors** (:func:`floor_ms`): for each of our stages, the bare library call that does its core
job on the same frame, with nothing around it (no validation, no overflow guards, no threshold
selection, no region labelling). Inputs a floor needs that are not its job (the int16 derivatives
and thresholds of the Canny floor) are prepared outside the clock. The floor of a stage is what
one such call costs on this machine, so ``ours / floor`` is the price of everything we do beyond
it:

* ``to_float``: the decoder's rescale, ``np.add(stored, intercept, dtype=float32)``;
* ``window``: ``np.clip`` to the CT window, then an in-place shift and scale to [0, 1];
* ``filter``: the bare denoiser ``config.denoise`` names, e.g. ``cv2.GaussianBlur`` with our
  sigma and kernel size (the default: sigma 1, 9x9);
* ``sobel``: two 3x3 ``cv2.Sobel`` to float32 and ``cv2.magnitude``;
* ``canny``: ``cv2.Canny`` on the int16 derivatives of that Sobel (scaled so the largest is
  30000, as :mod:`worker.imaging.edges` does), L2 gradient, at our automatic thresholds;
* ``features``: one pass over each full-frame summary the vector must read, no more:
  ``cv2.meanStdDev`` of the frame and of the gradient magnitude, and one 256-bin
  ``np.histogram`` of the magnitude on the :mod:`worker.imaging.stats` subsample (the vector's
  gradient percentiles are defined on it; a full-frame ``np.histogram`` costs more than our whole
  feature stage, so it is no floor). Texture, orientation and edge statistics have no floor term:
  the ratio shows their whole cost.

**The recipe** (:func:`recipe_ms`): the textbook pipeline the project started from, in OpenCV's
own tutorial idiom: HU to 8 bits through the soft-tissue window (40/400: clip, scale to 0..255,
``astype(uint8)``), a 3x3 mean with ``cv2.filter2D``, ``cv2.Sobel`` ksize 5 to ``CV_64F`` (dx,
dy) and ``cv2.magnitude``, then ``cv2.Canny`` on the smoothed 8-bit image with thresholds from
its intensity histogram: ``peak`` = the fullest of bins 1..254 of the 256-bin histogram
(``cv2.calcHist``), ``low = 0.66 * peak``, ``high = 1.33 * peak``. The clipped bins 0 and 255
are left out because on CT they hold the air and lungs, most of the slice: with them the peak is
0, so are both thresholds, and every pixel with any gradient would be an edge. The recipe has no
feature vector, so ``ours / recipe`` charges ours for features the recipe lacks.

>>> import numpy as np
>>> stored = np.full((32, 32), 1024, np.uint16); stored[8:24, 8:24] += 200
>>> floors, recipe = floor_ms(stored, -1024.0), recipe_ms(stored, -1024.0)
>>> set(floors) - set(recipe), tuple(recipe) == RECIPE_STEPS
({'features'}, True)
"""

from __future__ import annotations

import time
from typing import Final, cast

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging import CT_WINDOWS, ImagingConfig, auto_thresholds, gaussian_ksize
from worker.imaging.stats import subsample

#: Steps of :func:`recipe_ms`, named after the stages of ours they stand against.
RECIPE_STEPS: Final = ("to_float", "window", "filter", "sobel", "canny")
#: The recipe's 8-bit window, ``(center, width)`` in HU.
RECIPE_WINDOW: Final = CT_WINDOWS["soft_tissue"]
#: The recipe's Canny thresholds as fractions of the 8-bit histogram peak.
RECIPE_LOW: Final = 0.66
RECIPE_HIGH: Final = 1.33
#: Bins of the features floor's gradient histogram.
FLOOR_HIST_BINS: Final = 256
# OpenCV's Canny takes int16 derivatives: the largest is scaled to this, as our opencv method.
_INT16_FULL_SCALE: Final = 30000.0
_MEAN_3X3: Final = np.full((3, 3), 1.0 / 9.0, np.float32)

F32 = npt.NDArray[np.float32]


def _bare_denoise(frame: F32, cfg: ImagingConfig) -> F32:
    """The one OpenCV call behind ``cfg.denoise`` (``"none"``: the frame itself)."""
    border = cv2.BORDER_REFLECT_101
    if cfg.denoise == "gaussian":
        k = cfg.gaussian_ksize or gaussian_ksize(cfg.gaussian_sigma)
        s = cfg.gaussian_sigma
        return cast(F32, cv2.GaussianBlur(frame, (k, k), sigmaX=s, sigmaY=s, borderType=border))
    if cfg.denoise == "median":
        return cast(F32, cv2.medianBlur(frame, cfg.median_ksize))
    if cfg.denoise == "mean":
        return cast(F32, cv2.blur(frame, (cfg.mean_ksize, cfg.mean_ksize), borderType=border))
    return frame


def floor_ms(
    stored: npt.NDArray[np.uint16], intercept: float, config: ImagingConfig | None = None
) -> dict[str, float]:
    """Milliseconds of each stage's floor (see the module docstring) on one stored slice."""
    cfg = config or ImagingConfig()
    clock = time.perf_counter
    out: dict[str, float] = {}
    t0 = clock()
    frame = np.add(stored, np.float32(intercept), dtype=np.float32)
    t1 = clock()
    center, width = cfg.window or CT_WINDOWS[cfg.ct_window]
    lo, hi = np.float32(center - width / 2.0), np.float32(center + width / 2.0)
    t2 = clock()
    win = np.clip(frame, lo, hi)
    win -= lo
    win *= np.float32(1.0 / width)
    t3 = clock()
    smooth = _bare_denoise(frame, cfg)
    t4 = clock()
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    mag = cast(F32, cv2.magnitude(gx, gy))
    t5 = clock()
    out.update(to_float=t1 - t0, window=t3 - t2, filter=t4 - t3, sobel=t5 - t4)
    # Canny's inputs, outside the clock: our automatic thresholds and int16 derivatives.
    if cfg.canny_thresholds is not None:
        low, high = cfg.canny_thresholds
    else:
        low, high = auto_thresholds(mag, cfg.canny_noise_k, cfg.canny_floor, cfg.canny_low_ratio)
    peak = max(float(cv2.norm(gx, cv2.NORM_INF)), float(cv2.norm(gy, cv2.NORM_INF)), 1e-30)
    scale = _INT16_FULL_SCALE / peak
    dx = (gx * np.float32(scale)).astype(np.int16)
    dy = (gy * np.float32(scale)).astype(np.int16)
    t0 = clock()
    cv2.Canny(dx, dy, low * scale, high * scale, L2gradient=True)
    t1 = clock()
    cv2.meanStdDev(frame)
    cv2.meanStdDev(mag)
    np.histogram(subsample(mag), bins=FLOOR_HIST_BINS)
    t2 = clock()
    out.update(canny=t1 - t0, features=t2 - t1)
    return {name: s * 1e3 for name, s in out.items()}


def recipe_ms(stored: npt.NDArray[np.uint16], intercept: float) -> dict[str, float]:
    """Milliseconds of each step (:data:`RECIPE_STEPS`) of the textbook recipe on one slice."""
    clock = time.perf_counter
    center, width = RECIPE_WINDOW
    lo, hi = center - width / 2.0, center + width / 2.0
    t0 = clock()
    hu = np.add(stored, np.float32(intercept), dtype=np.float32)
    t1 = clock()
    img8 = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    t2 = clock()
    smooth = cv2.filter2D(img8, -1, _MEAN_3X3)
    t3 = clock()
    dx = cv2.Sobel(smooth, cv2.CV_64F, 1, 0, ksize=5)
    dy = cv2.Sobel(smooth, cv2.CV_64F, 0, 1, ksize=5)
    cv2.magnitude(dx, dy)
    t4 = clock()
    hist = cv2.calcHist([smooth], [0], None, [256], [0, 256]).ravel()
    peak = 1 + int(np.argmax(hist[1:255]))
    cv2.Canny(smooth, RECIPE_LOW * peak, RECIPE_HIGH * peak)
    t5 = clock()
    ends = (t0, t1, t2, t3, t4, t5)
    return {name: (ends[i + 1] - ends[i]) * 1e3 for i, name in enumerate(RECIPE_STEPS)}
