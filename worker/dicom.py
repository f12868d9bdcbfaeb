"""Pure DICOM decoding: Part 10 bytes in, frames in modality units plus PHI-free metadata out.

``decode`` never touches files or the network (those live in :mod:`worker.fetch`), so it can be
tested and fuzzed with plain bytes. Anything it cannot turn into frames raises
:class:`~worker.errors.Rejection` with a contract reason:

* ``too_large``: more bytes, pixels or frames than the limits allow (checked before decoding);
* ``not_dicom``: the bytes do not parse as a DICOM dataset;
* ``truncated``: the dataset ends inside an element;
* ``no_pixel_data``: a valid dataset without an image (reports, RT plans, waveforms);
* ``unsupported_transfer_syntax``: no installed decoder handles the syntax;
* ``decode_error``: a decoder failed on the pixel data;
* ``unsupported_image``: valid, but smaller than :data:`MIN_SIDE` pixels on a side;
* ``integrity_error``: a SOP, study or series UID that is not a DICOM UID, a complete pixel
  data element shorter than rows x columns x frames x bits, or a frame that is constant or not
  finite.

Colour is reduced to luminance (ITU-R BT.601 weights for RGB, the Y plane for YBR, palette
colour through its LUT), MONOCHROME1 is inverted so that bright means dense everywhere, integer
samples are masked or sign-extended to Bits Stored, and the modality LUT (rescale slope and
intercept) gives modality units: Hounsfield units for CT.

>>> from worker.phantoms import ct_slice, encode_ct
>>> inst = decode(encode_ct(ct_slice(seed=0, size=32)))
>>> inst.frames.shape, inst.meta.modality, inst.meta.units
((1, 32, 32), 'CT', 'HU')
>>> decode(b"hello")
Traceback (most recent call last):
...
worker.errors.Rejection: not_dicom: not a DICOM dataset (no DICM preamble and no parsable elements)
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from worker.dicom_pixels import apply_bits_stored, luminance, native_pixels, rescale
from worker.errors import Reason, Rejection

log = logging.getLogger(__name__)

# Elements any real DICOM object carries; a forced parse of random bytes finds none of them.
_IDENTITY_TAGS = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "Rows")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}


@dataclass(frozen=True)
class Limits:
    """Size limits checked before any pixel is decoded."""

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 64 * 1024 * 1024
    max_frames: int = 2000


@dataclass(frozen=True)
class InstanceMeta:
    """What a finding may say about an instance. ``patient_id`` only feeds the pseudonym."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    rows: int
    columns: int
    frame_count: int
    photometric: str
    bits_stored: int
    units: str
    patient_id: str | None = field(default=None, repr=False)
    # PixelSpacing (row, column) in mm, or None when absent or not two positive numbers.
    pixel_spacing_mm: tuple[float, float] | None = None


@dataclass(frozen=True)
class DecodedInstance:
    meta: InstanceMeta
    frames: npt.NDArray[np.float32]  # (frames, rows, columns), modality units


# Filters, edges and features need a neighbourhood: smaller images are valid DICOM the
# analysis cannot handle (``unsupported_image``).
MIN_SIDE: Final = 8
_UID: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
# Library messages quote element values ("Unknown (0028,0004) 'Photometric Interpretation' value
# 'X'", "could not convert string to float: 'X'"): a quoted span is withheld from a detail unless
# it is the name of a DICOM element.
_QUOTED: Final = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")
_TAG: Final = re.compile(r"\([0-9A-Fa-f]{4}, ?[0-9A-Fa-f]{4}\)")


def _message(exc: BaseException) -> str:
    """``exc`` for a Rejection detail: its type and message, element values withheld."""

    def withhold(match: re.Match[str]) -> str:
        text = match.group(0)
        name = text.strip("b'\"")  # 'Photometric Interpretation' names PhotometricInterpretation
        return text if name and tag_for_keyword(name.replace(" ", "")) else "'...'"

    return f"{type(exc).__name__}: {_QUOTED.sub(withhold, str(exc))}"


def _uid_text(value: object) -> str:
    """A UID for a detail; anything else in a UID element is withheld (it may be any text)."""
    text = str(value)
    return text if len(text) <= 64 and _UID.fullmatch(text) else "(not a UID)"


class _WithheldPydicomLog(logging.Handler):
    """pydicom's log messages quote element values ("Invalid value for VR DA: '1923-04-17'"), so
    they never reach the application's handlers: each warning or error becomes one DEBUG line
    of ours that names only its level and the tags it mentions."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING or not log.isEnabledFor(logging.DEBUG):
            return
        try:
            tags = sorted(set(_TAG.findall(record.getMessage())))
        except Exception:  # noqa: BLE001 - a malformed library record: say nothing of it
            tags = []
        log.debug(
            "pydicom %s withheld (it may quote element values)%s",
            record.levelname.lower(),
            f"; tags {', '.join(tags)}" if tags else "",
        )


def _contain_pydicom_logs() -> None:
    # The "pydicom" logger is the parent of every pydicom.* logger, so its handlers see them all.
    pydicom_log = logging.getLogger("pydicom")
    if not any(isinstance(h, _WithheldPydicomLog) for h in pydicom_log.handlers):
        pydicom_log.addHandler(_WithheldPydicomLog())
    pydicom_log.propagate = False


_contain_pydicom_logs()


def decode(data: bytes, limits: Limits = Limits()) -> DecodedInstance:
    """Decode one DICOM Part 10 instance; raise Rejection with a contract reason otherwise."""
    if len(data) > limits.max_bytes:
        raise Rejection("too_large", f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    # pydicom warns about every oddity of real-world files; those are not errors for us, and
    # turning them into exceptions (as strict test settings do) would reject valid images.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _parse(data)
        try:
            # pydicom converts element values lazily, so a corrupt value surfaces as whatever
            # its converter raises, at first access: all of that is this file's decode error.
            meta, pixels = _pixels(ds, limits)
            frames = _to_modality_units(ds, meta, pixels)
        except Rejection:
            raise
        except BaseException as exc:
            if not _is_decoder_failure(exc):
                raise
            raise Rejection("decode_error", _message(exc)) from exc
    _check_integrity(frames)
    return DecodedInstance(meta, frames)


def _parse(data: bytes) -> Dataset:
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except InvalidDicomError as exc:
        raise Rejection("not_dicom", f"not a DICOM dataset ({_message(exc)})") from exc
    except (EOFError, OSError) as exc:
        reason: Reason = "truncated" if has_preamble else "not_dicom"
        raise Rejection(reason, f"dataset ends unexpectedly ({_message(exc)})") from exc
    except Exception as exc:
        guess: Reason = "truncated" if has_preamble and _looks_truncated(exc) else "not_dicom"
        raise Rejection(guess, f"unparsable dataset ({_message(exc)})") from exc
    if has_preamble:
        return ds  # a Part 10 file that parsed: DICOM, with or without an image
    try:
        found = [kw for kw in _IDENTITY_TAGS if kw in ds]
    except Exception as exc:
        raise Rejection("not_dicom", f"unparsable dataset ({type(exc).__name__})") from exc
    if not found:
        raise Rejection(
            "not_dicom", "not a DICOM dataset (no DICM preamble and no parsable elements)"
        )
    return ds


def _looks_truncated(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("unpack", "buffer", "end of file", "eof", "bytes", "length"))


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value: Any = ds.get(keyword, default)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError) as exc:
        # The value itself is withheld: an IS element may hold any text.
        raise Rejection("decode_error", f"{keyword} is not an integer") from exc


def _pixels(ds: Dataset, limits: Limits) -> tuple[InstanceMeta, np.ndarray]:
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        if "Rows" in ds or len(ds) == 0:
            # An image header without its pixels, or a meta header without a dataset: the
            # bytes stop early (pydicom stops quietly at the end of the data).
            raise Rejection("truncated", "the dataset ends before its pixel data")
        raise Rejection(
            "no_pixel_data", f"SOP class {_uid_text(ds.get('SOPClassUID', ''))} has no image"
        )
    file_meta = getattr(ds, "file_meta", None)
    ts = UID(str(file_meta.get("TransferSyntaxUID", "") if file_meta else "") or _guess_ts(ds))
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    n_frames = max(1, _int(ds, "NumberOfFrames", 1))
    samples = max(1, _int(ds, "SamplesPerPixel", 1))
    bits_alloc = _int(ds, "BitsAllocated", 0)
    if rows < 1 or cols < 1 or bits_alloc < 1:
        raise Rejection(
            "decode_error",
            f"Image Pixel module incomplete: Rows={rows}, Columns={cols}, "
            f"BitsAllocated={bits_alloc}",
        )
    if n_frames > limits.max_frames:
        raise Rejection("too_large", f"{n_frames} frames exceeds the limit of {limits.max_frames}")
    if rows * cols * n_frames > limits.max_pixels:
        raise Rejection(
            "too_large", f"{rows}x{cols}x{n_frames} pixels exceeds the limit of {limits.max_pixels}"
        )
    if not str(ds.get("SOPInstanceUID", "")).strip():
        raise Rejection("integrity_error", "no SOPInstanceUID: a finding could not name the image")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = str(ds.get(keyword, "") or "")
        if uid and not (len(uid) <= 64 and _UID.fullmatch(uid)):
            # A finding names the instance by its UIDs; one that is not a UID (seen: 64 hex
            # digits) would break the finding contract and every join downstream.
            raise Rejection("integrity_error", f"{keyword} is not a DICOM UID (PS3.5 9.1)")
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise Rejection(
            "unsupported_image",
            f"{rows}x{cols} pixels: the analysis needs at least {MIN_SIDE}x{MIN_SIDE}",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if "PixelData" in ds and ts in _NATIVE_SYNTAXES:
        if photometric == "YBR_FULL_422":
            samples = 2  # two luma samples share one Cb and one Cr: 4 values per 2 pixels
        expected = (rows * cols * n_frames * samples * bits_alloc + 7) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            last_is_pixels = list(ds.keys())[-1] == 0x7FE00010
            raise Rejection(
                "truncated" if last_is_pixels else "integrity_error",
                f"pixel data holds {actual} bytes; {rows}x{cols}x{n_frames}x{samples} samples of "
                f"{bits_alloc} bits need {expected}",
            )
    elif "PixelData" in ds:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            detail = f"no decoder for {_uid_text(ts)}"
            raise Rejection("unsupported_transfer_syntax", detail) from exc
        if not decoder.is_available:
            raise Rejection("unsupported_transfer_syntax", f"no installed decoder for {ts.name}")
    try:
        # as_rgb=False: keep YBR as YBR so that luminance is the Y plane, not a round trip.
        arr = native_pixels(ds, str(ts), (n_frames, rows, cols), samples, bits_alloc, photometric)
        if arr is None:
            arr = pixel_array(ds, as_rgb=False)
    except BaseException as exc:
        if not _is_decoder_failure(exc):
            raise
        raise Rejection("decode_error", f"{ts.name}: {_message(exc)}") from exc
    modality = str(ds.get("Modality", "OT") or "OT").strip().upper()
    meta = InstanceMeta(
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=modality,
        transfer_syntax=str(ts),
        rows=rows,
        columns=cols,
        frame_count=n_frames,
        photometric=photometric,
        bits_stored=_int(ds, "BitsStored", bits_alloc),
        units="HU" if modality == "CT" and "RescaleIntercept" in ds else "modality",
        patient_id=str(ds.get("PatientID", "")) or None,
        pixel_spacing_mm=_spacing(ds),
    )
    return meta, arr


def _spacing(ds: Any) -> tuple[float, float] | None:
    """PixelSpacing as two positive finite floats, else None (absent or malformed)."""
    try:
        raw = ds.get("PixelSpacing")
        if raw is None or len(raw) != 2:
            return None
        row, col = float(raw[0]), float(raw[1])
    except Exception:  # noqa: BLE001 - a malformed DS in hostile input: no spacing, not a crash
        return None
    if not (0 < row < 1e4 and 0 < col < 1e4):  # also refuses NaN
        return None
    return row, col


def _is_decoder_failure(exc: BaseException) -> bool:
    """Decoders raise RuntimeError, ValueError and friends; the Rust ones (pyo3) raise
    PanicException, which derives from BaseException. Interrupts must still propagate."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def _guess_ts(ds: Dataset) -> str:
    # Files without a meta header: pydicom worked out the encoding while reading.
    little = getattr(ds, "is_little_endian", True)
    implicit = getattr(ds, "is_implicit_VR", True)
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


def _to_modality_units(ds: Dataset, meta: InstanceMeta, arr: np.ndarray) -> npt.NDArray[np.float32]:
    colour = arr.ndim == (4 if meta.frame_count > 1 else 3)
    if arr.dtype.kind in "iu" and not colour:
        arr = apply_bits_stored(arr, meta.bits_stored, signed=arr.dtype.kind == "i")
    try:
        if meta.photometric == "PALETTE COLOR":
            arr = luminance(apply_color_lut(arr, ds))
        elif colour and meta.photometric.startswith("YBR"):
            arr = arr[..., 0]
        elif colour:
            arr = luminance(arr)
        else:
            arr = rescale(arr, ds)
    except Exception as exc:
        raise Rejection("decode_error", f"colour/rescale: {_message(exc)}") from exc
    frames = np.asarray(arr, dtype=np.float32)
    if meta.photometric == "MONOCHROME1":
        frames = np.float32(frames.max() + frames.min()) - frames
    if meta.frame_count == 1 and frames.ndim == 2:
        frames = frames[np.newaxis]
    if frames.ndim != 3:
        raise Rejection("decode_error", f"unexpected pixel array shape {arr.shape}")
    return frames


def _check_integrity(frames: npt.NDArray[np.float32]) -> None:
    """Every frame finite and not constant, from each frame's minimum and maximum alone.

    Both are NaN when a frame holds a NaN, and one is infinite when it holds an infinity, so
    the two reductions answer both questions without ``np.isfinite``'s pass and temporary.

    >>> _check_integrity(np.float32([[[0, 1]], [[2, np.inf]]]))
    Traceback (most recent call last):
    ...
    worker.errors.Rejection: integrity_error: frame 1 has NaN or infinite values
    """
    flat = frames.reshape(frames.shape[0], -1)
    lowest, highest = flat.min(axis=1), flat.max(axis=1)
    finite = np.isfinite(lowest) & np.isfinite(highest)
    if not finite.all():
        raise Rejection(
            "integrity_error", f"frame {int(np.argmin(finite))} has NaN or infinite values"
        )
    constant = lowest == highest
    if constant.any():
        raise Rejection("integrity_error", f"frame {int(np.argmax(constant))} is constant")
