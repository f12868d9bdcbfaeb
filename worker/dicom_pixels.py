"""Stored pixel values to numbers: the array steps of :func:`worker.dicom.decode`, pure.

Each takes an array (or a dataset's pixel bytes) and gives a new one, with no I/O; the decoder
composes them with its checks and its error reasons.
"""

from __future__ import annotations

import sys
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_rescale

#: Little-endian native syntaxes (implicit and explicit VR): their pixel bytes are the array.
LITTLE_NATIVE: Final = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def native_pixels(
    ds: Dataset,
    ts: str,
    shape: tuple[int, int, int],
    samples: int,
    bits_alloc: int,
    photometric: str,
) -> np.ndarray | None:
    """The pixels of the commonest CT/MR/CR encoding as a view of the bytes, else None.

    For uncompressed little-endian greyscale with 16 bits allocated, pydicom's ``pixel_array``
    makes the same array through its decoder machinery (0.5 ms for a 512x512 slice here, against
    a few microseconds for the view). Anything else, or a length that does not fit (the decoder
    refuses short pixel data before this), goes through pydicom. The view is read-only; every
    later stage makes new arrays. Shape as ``pixel_array``'s: (rows, cols), or (frames, rows,
    cols).
    """
    representation = ds.get("PixelRepresentation", 0)
    if not (
        ts in LITTLE_NATIVE
        and sys.byteorder == "little"
        and bits_alloc == 16
        and samples == 1
        and photometric in ("MONOCHROME1", "MONOCHROME2")
        and representation in (0, 1)
        and "PixelData" in ds
    ):
        return None
    frames, rows, cols = shape
    count = frames * rows * cols
    raw = ds.PixelData
    if not isinstance(raw, bytes) or len(raw) < 2 * count:
        return None
    arr = np.frombuffer(raw, np.int16 if representation == 1 else np.uint16, count=count)
    return arr.reshape(shape if frames > 1 else (rows, cols))


def rescale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """The Modality LUT stage, straight to float32 where that is exact.

    pydicom's ``apply_rescale`` computes ``stored * slope + intercept`` in float64 and the caller
    then rounds to float32: two passes and a 2 MB temporary per 512x512 slice. For the common CT
    case (slope 1, an integer intercept, stored values of at most 16 bits) every result is an
    integer below 2**24, which float32 holds exactly, so one float32 add gives the same values.
    Anything else (other slopes, a Modality LUT Sequence) goes through pydicom.

    >>> ds = Dataset(); ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    >>> rescale(np.array([[0, 3000]], np.uint16), ds).tolist()
    [[-1024.0, 1976.0]]
    """
    if (
        arr.dtype.kind in "iu"
        and arr.dtype.itemsize <= 2
        and not ds.get("ModalityLUTSequence")
        and "RescaleSlope" in ds
        and "RescaleIntercept" in ds
    ):
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        if slope == 1.0 and intercept.is_integer() and abs(intercept) <= 2.0**23:
            exact: np.ndarray = np.add(arr, np.float32(intercept), dtype=np.float32)
            return exact
    rescaled: np.ndarray = apply_rescale(arr, ds)
    return rescaled


def apply_bits_stored(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Only the low ``bits_stored`` bits of each value count (the rest may hold overlay bits or
    garbage): masked, or sign-extended from the top stored bit when ``signed``.

    >>> apply_bits_stored(np.array([0xF000, 0xFFFF], np.uint16), 12, False).tolist()
    [0, 4095]
    >>> apply_bits_stored(np.array([0x0FFF, 0x0800], np.int16), 12, True).tolist()
    [-1, -2048]
    """
    bits_alloc = arr.dtype.itemsize * 8
    if not 0 < bits_stored < bits_alloc:
        return arr
    if signed:
        shift = bits_alloc - bits_stored
        extended: np.ndarray = (arr << shift) >> shift  # sign-extend from bit bits_stored-1
        return extended
    masked: np.ndarray = arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)
    return masked


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (0.299 R + 0.587 G + 0.114 B) of the last axis' first three samples, float32.

    >>> y = luminance(np.array([[255, 255, 255], [255, 0, 0]], np.uint8))
    >>> [round(v, 2) for v in y.tolist()]
    [255.0, 76.24]
    """
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.asarray(rgb[..., :3], dtype=np.float32) @ weights
