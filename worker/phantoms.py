"""Deterministic CT-like phantoms, and their encoding as real DICOM.

Used by training (the demonstration models learn from these), the benchmark workload and tests.
Nothing here is patient data: every value comes from a seeded generator.

A slice is a body ellipse of soft tissue (~40 HU) in air (-1000 HU), two lungs (~-850 HU), a
spine (~700 HU) and, optionally, one round lesion of a given radius and contrast, plus Gaussian
noise. Values are float32 Hounsfield units.

>>> hu = ct_slice(seed=1, size=64)
>>> hu.shape, hu.dtype, bool(hu.min() < -900 and hu.max() > 400)
((64, 64), dtype('float32'), True)
>>> bool((ct_slice(seed=1, size=64) == hu).all())
True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Root for deterministic UIDs (2.25 = UUID-derived arc; the digits come from a hash of the seed).
_UID_ROOT = "2.25."


@dataclass(frozen=True)
class Lesion:
    """A round lesion: centre (row, col) in pixels, radius in pixels, contrast in HU."""

    row: float
    col: float
    radius: float
    contrast_hu: float


def ct_slice(
    seed: int,
    size: int = 512,
    lesion: Lesion | None = None,
    noise_hu: float = 12.0,
) -> np.ndarray:
    """A float32 CT-like slice in HU, identical for identical arguments."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    # Anatomy jitters a little with the seed so that no two slices are identical.
    ax = size * (0.42 + 0.03 * rng.random())
    ay = size * (0.32 + 0.03 * rng.random())
    img = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((xx - c) / ax) ** 2 + ((yy - c) / ay) ** 2 <= 1.0
    img[body] = 40.0 + 10.0 * rng.standard_normal()
    for side in (-1.0, 1.0):
        lx = c + side * size * (0.17 + 0.02 * rng.random())
        lung = ((xx - lx) / (size * 0.12)) ** 2 + (
            (yy - c + size * 0.02) / (size * 0.2)
        ) ** 2 <= 1.0
        img[lung] = -850.0
    spine = (xx - c) ** 2 + (yy - (c + ay * 0.7)) ** 2 <= (size * 0.05) ** 2
    img[spine] = 700.0
    if lesion is not None:
        disk = (xx - lesion.col) ** 2 + (yy - lesion.row) ** 2 <= lesion.radius**2
        img[disk & body] += lesion.contrast_hu
    img += rng.normal(0.0, noise_hu, size=img.shape).astype(np.float32)
    return img


def random_lesion(
    rng: np.random.Generator,
    size: int,
    radius: tuple[float, float] = (0.02, 0.06),
    contrast: tuple[float, float] = (60.0, 200.0),
) -> Lesion:
    """A lesion placed in soft tissue between the lungs or beside them, of random size/contrast."""
    c = (size - 1) / 2.0
    r = float(rng.uniform(*radius)) * size
    row = c + float(rng.uniform(-0.12, 0.12)) * size
    col = c + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.0, 0.3)) * size
    sign = 1.0 if rng.random() < 0.8 else -1.0
    return Lesion(row, col, r, sign * float(rng.uniform(*contrast)))


def deterministic_uid(*parts: object) -> str:
    """A valid DICOM UID derived from ``parts`` (same parts, same UID)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def encode_ct(
    hu: np.ndarray,
    study: str = "phantom-study",
    series: int = 1,
    instance: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    """Encode a HU slice as a DICOM Part 10 CT Image (16-bit, slope 1, intercept -1024).

    ``transfer_syntax`` may name a compressed syntax that pydicom can encode (e.g. RLE Lossless).
    Patient identity is synthetic; it exists so that pseudonymisation can be tested.
    """
    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    sop_uid = UID(deterministic_uid(study, series, instance))
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = deterministic_uid(study)
    ds.SeriesInstanceUID = deterministic_uid(study, series)
    ds.Modality = "CT"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = f"PHANTOM-{study}"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = _dt.date(2026, 1, 1).strftime("%Y%m%d")
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = "HU"
    ds.PixelSpacing = [0.7, 0.7]
    ds.PixelData = stored.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)  # keep UIDs stable
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
