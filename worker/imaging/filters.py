"""Denoising filters on 16-bit and float data, never squeezed to 8 bits first.

Every filter returns float32 in the units of its input (HU stays HU). Borders:

* :func:`mean_filter` and :func:`gaussian_filter` reflect without repeating the edge pixel
  (OpenCV ``BORDER_REFLECT_101``, scipy.ndimage ``mode="mirror"``);
* :func:`median_filter` repeats the edge pixel (``BORDER_REPLICATE``, scipy ``mode="nearest"``),
  because that is what OpenCV's ``medianBlur`` does internally and the exact fallback for large
  kernels must give the same answer.

>>> import numpy as np
>>> img = np.zeros((15, 15), np.float32); img[7, 7] = 9000.0
>>> float(mean_filter(img)[7, 7]), float(median_filter(img)[7, 7])
(1000.0, 0.0)
>>> round(float(gaussian_filter(img, sigma=1.0).sum()))
9000
"""

from __future__ import annotations

from typing import Final, cast

import cv2
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

# OpenCV's medianBlur handles uint16/float32 only for these kernel sizes (any size for uint8).
_CV_MEDIAN_MAX_KSIZE: Final = 5
# Elements per chunk of the exact median fallback (bounds its memory to ~64 MiB of float32).
_MEDIAN_CHUNK_ELEMS: Final = 16 * 1024 * 1024


def as_float32(image: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``image`` as a C-contiguous float32 2-D array (no copy when it already is one).

    >>> as_float32(np.array([[1, 2], [3, 4]], np.uint16)).dtype
    dtype('float32')
    """
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return arr


def _f32(result: object) -> npt.NDArray[np.float32]:
    # OpenCV returns float32 for float32 input; its stubs (where present) only say "MatLike".
    return cast("npt.NDArray[np.float32]", result)


def _check_ksize(ksize: int) -> None:
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {ksize}")


def gaussian_ksize(sigma: float) -> int:
    """The kernel size for ``sigma``: ``2 * int(4 * sigma + 0.5) + 1``.

    That is scipy.ndimage's default (``truncate=4``), so both libraries use the same kernel.

    >>> gaussian_ksize(1.0), gaussian_ksize(1.5)
    (9, 13)
    """
    return 2 * int(4.0 * sigma + 0.5) + 1


def mean_filter(image: npt.ArrayLike, ksize: int = 3) -> npt.NDArray[np.float32]:
    """Box filter: correlation with a ``ksize`` x ``ksize`` kernel of ones / ksize².

    >>> mean_filter(np.full((4, 4), 7.0, np.float32)).tolist()[0]
    [7.0, 7.0, 7.0, 7.0]
    """
    _check_ksize(ksize)
    img = as_float32(image)
    return _f32(cv2.blur(img, (ksize, ksize), borderType=cv2.BORDER_REFLECT_101))


def gaussian_filter(
    image: npt.ArrayLike, sigma: float = 1.0, ksize: int = 0
) -> npt.NDArray[np.float32]:
    """Gaussian blur with standard deviation ``sigma`` (pixels).

    ``ksize`` 0 means :func:`gaussian_ksize` (``sigma`` truncated at 4 standard deviations).

    >>> out = gaussian_filter(np.eye(9, dtype=np.float32) * 100, sigma=1.0)
    >>> out.dtype, out.shape
    (dtype('float32'), (9, 9))
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    k = ksize or gaussian_ksize(sigma)
    _check_ksize(k)
    img = as_float32(image)
    return _f32(
        cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    )


def median_filter(image: npt.ArrayLike, ksize: int = 3) -> npt.NDArray[np.float32]:
    """Median over a ``ksize`` x ``ksize`` square, exact on 16-bit and float data for any size.

    OpenCV does 3 and 5 natively on float32 (and any size on uint8 input); larger kernels on
    other data use an exact, chunked numpy selection, roughly 100x slower than OpenCV, rather
    than quantising to 8 bits.

    >>> img = np.array([[0, 0, 0], [0, 5000, 0], [0, 0, 7000]], np.float32)
    >>> median_filter(img, 3)[1, 1], median_filter(img, 7)[1, 1]
    (np.float32(0.0), np.float32(0.0))
    """
    _check_ksize(ksize)
    if ksize == 1:
        return as_float32(image).copy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return cv2.medianBlur(np.ascontiguousarray(arr), ksize).astype(np.float32)
    img = as_float32(arr)
    if ksize <= _CV_MEDIAN_MAX_KSIZE:
        return _f32(cv2.medianBlur(img, ksize))
    return _median_exact(img, ksize)


def _median_exact(img: npt.NDArray[np.float32], ksize: int) -> npt.NDArray[np.float32]:
    r = ksize // 2
    padded = cv2.copyMakeBorder(img, r, r, r, r, cv2.BORDER_REPLICATE)
    h, w = img.shape
    out = np.empty_like(img)
    mid = ksize * ksize // 2
    rows = max(1, _MEDIAN_CHUNK_ELEMS // (w * ksize * ksize))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        windows = sliding_window_view(padded[r0 : r1 + 2 * r], (ksize, ksize))
        flat = windows.reshape(r1 - r0, w, ksize * ksize)  # copies: one chunk at a time
        flat.partition(mid, axis=-1)
        out[r0:r1] = flat[..., mid]
    return out
