"""What a parsed ``SCANSTREAM_EXPORT_TO`` names, and what the C-STORE and STOW-RS senders share."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Literal

import pydicom

from worker.export import Rejected

TO, AUTH = "SCANSTREAM_EXPORT_TO", "SCANSTREAM_EXPORT_AUTH"


@dataclass(frozen=True)
class DestinationSpec:
    """A parsed ``SCANSTREAM_EXPORT_TO``: ``ae_title`` for ``dicom``, ``url`` (the DICOMweb
    root, no trailing slash) for ``stow``."""

    kind: Literal["dicom", "stow"]
    host: str
    port: int
    ae_title: str = ""
    url: str = ""

    @property
    def name(self) -> str:
        """Safe to log: the destination holds no credentials."""
        if self.kind == "stow":
            return self.url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dicom://{self.ae_title}@{host}:{self.port}"

    @property
    def stow_url(self) -> str:
        return self.url + "/studies"


def brief(exc: BaseException) -> str:
    """An exception as one short line, for a result's detail.

    >>> brief(OSError("connection\\n  refused"))
    'OSError: connection refused'
    """
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def read_dicom(data: bytes) -> pydicom.Dataset | Rejected:
    """The Part 10 file ``data`` holds, or ``Rejected`` with status 0 (never sent).

    >>> read_dicom(b"not DICOM").status
    0
    """
    try:
        ds = pydicom.dcmread(BytesIO(data))
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:  # noqa: BLE001 - any parse failure: the record is not DICOM
        return Rejected(0, f"not a DICOM file (not sent): {brief(exc)}")
    return ds
