"""DICOM results out: ``scanstream export`` sends the SRs of the SR topic to one destination.

A send ends in one of four :data:`SendResult` kinds, and the exporter's loop
(:mod:`worker.export.loop`) acts on the kind alone:

* :class:`Sent`: the destination stored it (a DICOM warning status, or an instance it already
  had, counts as stored);
* :class:`Rejected`: the destination refused this record for good (a C-STORE failure status
  such as 0xA900/0xC000, HTTP 400/409/413/415...): it goes to the dead letters with the status,
  and the next record goes on;
* :class:`Failed`: the destination answered, but with a failure that may pass (C-STORE 0xA7xx
  "out of resources", HTTP 500): tried again with backoff, at most ``export_max_attempts``
  times for this record, then a dead letter;
* :class:`Unreachable`: the destination is not there or will not talk to us (connection
  refused or timed out, association rejected or aborted, HTTP 401/403/429/502/503/504): the
  export pauses and probes again with backoff, without limit and without charging the record;
  ``/healthz`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sent:
    """Stored. ``status``: the DICOM status or HTTP status code."""

    status: int
    detail: str = ""


@dataclass(frozen=True)
class Rejected:
    """Refused for good because of this record. ``status``: the C-STORE status, the STOW-RS
    FailureReason or HTTP status; 0 where it was refused before anything was sent (not a
    readable DICOM file, not an SR)."""

    status: int
    detail: str


@dataclass(frozen=True)
class Failed:
    """A failure the destination reported that may pass; counts against the record's budget."""

    status: int | None
    detail: str


@dataclass(frozen=True)
class Unreachable:
    """The destination itself is away or refuses us; says nothing about the record."""

    detail: str


SendResult = Sent | Rejected | Failed | Unreachable


class Destination(Protocol):
    """One place SRs are sent to; ``name`` is safe to log (no credentials)."""

    name: str

    def send(self, data: bytes) -> SendResult:
        """Send one DICOM Part 10 file; never raises for the record's or the peer's sake."""
        ...

    def close(self) -> None:
        """Release any association or connection held open."""
        ...
