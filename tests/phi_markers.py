"""DICOM instances whose identifying and free-text elements carry marker strings (issue 12).

Shared by ``tests/unit/test_phi_markers_unit.py`` (the pipeline, no broker) and
``tests/integration/test_phi_markers.py`` (the worker on the real broker). Every marker starts
with :data:`PREFIX`, so one search for the prefix finds any of them, whole or cut short; the
birth date is searched in its DICOM (``19230417``) and ISO (``1923-04-17``) forms, and every
marker's unkeyed SHA-256 and MD5 (a "pseudonym" without a key would still identify).

Each case names what the instance must become: ``finding`` or a dead-letter reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.runtime.jsonlog import JsonFormatter

PREFIX = "PHIMARK"
BIRTH_DATE = "19230417"
# keyword -> marker. SH elements hold at most 16 characters, hence the short names there.
MARKERS: dict[str, str] = {
    "PatientName": "PHIMARK-NAME-7f3a",
    "PatientID": "PHIMARK-PID-7f3a",
    "OtherPatientIDs": "PHIMARK-OPID-7f3a",
    "OtherPatientNames": "PHIMARK-ONAME-7f3a",
    "PatientBirthName": "PHIMARK-BNAME-7f3a",
    "PatientMotherBirthName": "PHIMARK-MOTHER-7f3a",
    "PatientAddress": "PHIMARK-PADDR-7f3a, 12 Example Road",
    "PatientTelephoneNumbers": "PHIMARK-TEL-7f3a",
    "PatientComments": "PHIMARK-PCOMMENT-7f3a: lives alone",
    "AdditionalPatientHistory": "PHIMARK-HISTORY-7f3a",
    "InstitutionName": "PHIMARK-INST-7f3a",
    "InstitutionAddress": "PHIMARK-IADDR-7f3a, 1 Hospital Street",
    "InstitutionalDepartmentName": "PHIMARK-DEPT-7f3a",
    "ReferringPhysicianName": "PHIMARK-REFPHYS-7f3a",
    "PerformingPhysicianName": "PHIMARK-PERFPHYS-7f3a",
    "RequestingPhysician": "PHIMARK-REQPHYS-7f3a",
    "OperatorsName": "PHIMARK-OPERATOR-7f3a",
    "AccessionNumber": "PHIMARK-ACC-7f3a",
    "StudyID": "PHIMARK-SID-7f3a",
    "StationName": "PHIMARK-STN-7f3a",
    "DeviceSerialNumber": "PHIMARK-SERIAL-7f3a",
    "StudyDescription": "PHIMARK-STUDYDESC-7f3a",
    "SeriesDescription": "PHIMARK-SERIESDESC-7f3a",
    "ProtocolName": "PHIMARK-PROTOCOL-7f3a",
    "ImageComments": "PHIMARK-IMGCOMMENT-7f3a: see prior",
}
NESTED = "PHIMARK-SEQPID-7f3a"  # PatientID inside OtherPatientIDsSequence
PRIVATE = "PHIMARK-PRIVATE-7f3a"  # a private LO element
ALL_MARKERS = (*MARKERS.values(), NESTED, PRIVATE)
# Any of these in an output is a leak; the prefix alone catches markers cut short or re-cased.
FORBIDDEN: tuple[str, ...] = (
    PREFIX,
    BIRTH_DATE,
    "1923-04-17",
    *(hashlib.sha256(m.encode()).hexdigest() for m in ALL_MARKERS),
    *(hashlib.md5(m.encode()).hexdigest() for m in ALL_MARKERS),
)


def leaks(text: str | bytes | None) -> list[str]:
    """The forbidden strings found in ``text`` (case-insensitive)."""
    if text is None:
        return []
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    low = text.lower()
    return [f for f in FORBIDDEN if f.lower() in low]


def _quiet(change: Callable[[Dataset], None], ds: Dataset) -> None:
    # Some cases are invalid DICOM on purpose; pydicom warns about them (errors under pytest).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        change(ds)


def mark(data: bytes, change: Callable[[Dataset], None] | None = None) -> bytes:
    """``data`` (a phantom) with every marker set, then ``change`` applied, re-encoded."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, marker in MARKERS.items():
        setattr(ds, keyword, marker)
    ds.PatientBirthDate = BIRTH_DATE
    item = Dataset()
    item.PatientID = NESTED
    item.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([item])
    ds.private_block(0x0011, "SCANSTREAM TEST", create=True).add_new(0x01, "LO", PRIVATE)
    if change is not None:
        _quiet(change, ds)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: str  # "finding" or the dead-letter reason
    alert: bool = False  # the finding must raise an alert (with the tests' alert rule)


# Settings the cases assume: a 300 kB message limit (the 512x512 slice is too large in bytes)
# and a 40 000 pixel limit (the 256x256 slice, 131 kB, is too large in pixels).
MAX_MESSAGE_BYTES = 300_000
MAX_PIXELS = 40_000


def _strip_image(ds: Dataset) -> None:
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)


def _short_pixels_then_padding(ds: Dataset) -> None:
    ds.Rows = 256  # pixel data holds 128x128 samples; an element follows it
    ds.add_new(0xFFFCFFFC, "OB", (PREFIX + "-TRAILING-7f3a").encode())


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return change


def _meta(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds.file_meta, keyword, value)

    return change


def _frames_not_a_number(data: bytes) -> bytes:
    """NumberOfFrames (IS) holding text: pydicom refuses to write that, so patch the bytes."""
    element = b"\x28\x00\x08\x00IS\x08\x00"  # (0028,0008), explicit VR little endian, 8 bytes
    assert data.count(element + b"00000001") == 1
    return data.replace(element + b"00000001", element + b"PHIMARKN")


def cases() -> list[Case]:
    """Every output path: findings (one with an alert), and a dead letter for each reason a
    DICOM can be refused for, every one of them carrying all the markers."""
    normal = encode_ct(ct_slice(3, 128), study="phi-normal", instance=1)
    lesion = encode_ct(ct_slice(8, 128, Lesion(60, 64, 6, 150)), study="phi-lesion", instance=2)
    rle = encode_ct(ct_slice(5, 128), study="phi-mpeg", instance=3, transfer_syntax=RLELossless)

    def slice_(seed: int, size: int = 128) -> bytes:
        return encode_ct(ct_slice(seed, size), study=f"phi-{seed}", instance=seed)

    legacy_date = _set("PatientBirthDate", "1923-04-17")  # not a DA: pydicom warns, quoting it
    out = [
        Case("finding", mark(normal), "finding"),
        Case("alert", mark(lesion), "finding", alert=True),
        Case("legacy birth date", mark(slice_(11), legacy_date), "finding"),
        Case("no pixel data", mark(slice_(12), _strip_image), "no_pixel_data"),
        Case("truncated", mark(slice_(13))[:-5000], "truncated"),
        Case(
            "unknown transfer syntax",
            mark(rle, _meta("TransferSyntaxUID", "1.2.840.10008.1.2.4.100")),  # MPEG2
            "unsupported_transfer_syntax",
        ),
        Case(
            "transfer syntax not a UID",
            mark(slice_(14), _meta("TransferSyntaxUID", PREFIX + "-TSUID-7f3a")),
            "unsupported_transfer_syntax",
        ),
        Case("too many bytes", mark(slice_(15, 512)), "too_large"),
        Case("too many pixels", mark(slice_(16, 256)), "too_large"),
        Case(
            "pixel data too short", mark(slice_(17), _short_pixels_then_padding), "integrity_error"
        ),
        Case(
            "SOP instance UID not a UID",
            mark(slice_(18), _set("SOPInstanceUID", PREFIX + "-SOPUID-7f3a")),
            "integrity_error",
        ),
        Case(
            "constant image",
            mark(encode_ct(np.zeros((32, 32), np.float32), study="phi-flat")),
            "integrity_error",
        ),
        Case(
            "unknown photometric interpretation",
            mark(slice_(19), _set("PhotometricInterpretation", "PHIMARK_PI_7F3A")),
            "decode_error",
        ),
        Case(
            "frame count not a number",
            _frames_not_a_number(mark(slice_(20), _set("NumberOfFrames", "00000001"))),
            "decode_error",
        ),
        Case(
            "4x4 image",
            mark(encode_ct(np.arange(16, dtype=np.float32).reshape(4, 4), study="phi-tiny")),
            "unsupported_image",
        ),
        Case("not DICOM", b" ".join([m.encode() for m in ALL_MARKERS] * 4), "not_dicom"),
    ]
    return out


def carries_markers(case: Case, value: bytes | None) -> bool:
    """The bytes a case sent (or its dead letter's value) hold its markers: the test's markers
    did reach the worker."""
    assert value is not None
    needed: Iterable[str] = ALL_MARKERS if case.expected != "not_dicom" else MARKERS.values()
    return all(m.encode() in value for m in needed)


# kafka-python's DEBUG lines dump raw protocol bytes (kafka.protocol.parser "Recv: b'...'"):
# fetched and produced record values, i.e. the DICOM itself. The worker's log set-up
# (worker.runtime.jsonlog.setup) keeps the "kafka" logger at WARNING whatever the log level, as
# test_phi_markers_unit checks; captures keep it there too, and every other logger at DEBUG.
PINNED_LEVELS = {"kafka": logging.WARNING}


class LogCapture(logging.Handler):
    """Every record of every logger at DEBUG (but :data:`PINNED_LEVELS`): formatted plainly
    (with tracebacks) and by the worker's JSON formatter. Use as a context manager; levels are
    restored on exit."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
        self._json = JsonFormatter()
        self._levels: dict[logging.Logger, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds the handler's lock: records from the worker's threads are safe.
        self.lines += [self._plain.format(record), self._json.format(record)]

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        loggers = [root, *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
        for logger in loggers:
            self._levels[logger] = logger.level
            pinned = [n for n in PINNED_LEVELS if logger.name.startswith(n + ".")]
            if pinned:  # under a pinned logger: inherit its level (nothing sets these)
                logger.setLevel(logging.NOTSET)
            else:
                logger.setLevel(PINNED_LEVELS.get(logger.name, logging.DEBUG))
        # pydicom's logger too: what it logs, at any level, must not reach the application's
        # handlers (worker.dicom withholds it; pydicom's messages quote element values).
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for logger, level in self._levels.items():
            logger.setLevel(level)

    def worker_lines(self) -> list[str]:
        return [line for line in self.lines if " worker." in line or '"worker.' in line]
