"""One exception root for the project, and the reason codes of the dead-letter contract.

Every error the worker raises on purpose derives from :class:`ScanStreamError`. Errors about one
event are :class:`Rejection` and carry a reason code from :data:`REASONS`; the runtime turns them
into dead letters. The codes added for hostile input: ``unsupported_image`` (valid DICOM the
analysis cannot handle, e.g. smaller than 8x8 pixels), ``timeout`` (the per-event time budget ran
out), ``result_refused`` (the broker refused this event's finding for good, e.g. too large) and
``contract_violation`` (the finding or alert would break its own schema); for reference events,
``reference_refused`` (the URI lies outside what ``SCANSTREAM_REFERENCE_ALLOW`` permits, or breaks
a rule of :mod:`worker.references`: a file URI with a host, dot-segments, userinfo, a redirect
leaving the allowed prefixes; with the default empty allow-list every reference event is
refused) as opposed to ``fetch_error`` (allowed, but it could not be read). The exporter of DICOM
SRs (``scanstream export``) dead-letters an SR record with ``export_rejected`` (its destination
refused it for good: a C-STORE failure status, an HTTP 4xx) or ``export_failed`` (temporary
failures, ``SCANSTREAM_EXPORT_MAX_ATTEMPTS`` in a row, for this record). ``internal_error`` is
kept for our own bugs: the test suite fails on any. Library errors are wrapped with
``raise Rejection(...) from exc`` so the cause is kept for the log while the dead letter
carries only the reason and a short detail.

>>> err = Rejection("not_dicom", "no DICM preamble")
>>> err.reason, str(err)
('not_dicom', 'not_dicom: no DICM preamble')
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

Reason = Literal[
    "not_dicom",
    "truncated",
    "no_pixel_data",
    "unsupported_transfer_syntax",
    "decode_error",
    "integrity_error",
    "too_large",
    "schema_error",
    "fetch_error",
    "reference_refused",
    "unsupported_image",
    "timeout",
    "result_refused",
    "contract_violation",
    "export_rejected",
    "export_failed",
    "internal_error",
]
REASONS: Final[tuple[str, ...]] = get_args(Reason)


class ScanStreamError(Exception):
    """Root of every error ScanStream raises on purpose."""


class ConfigError(ScanStreamError):
    """A misconfiguration found at start; the message says what to fix."""


class BrokerError(ScanStreamError):
    """The local Kafka broker could not be provisioned, started or reached."""


class ModelError(ScanStreamError):
    """A model file or card is missing, tampered with, or cannot run where required."""


class Rejection(ScanStreamError):
    """One event cannot become a finding; it goes to the dead letters with ``reason``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        if reason not in REASONS:  # a typo here would silently break the contract
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason: Reason = reason
        # Details end up in a Kafka header: keep them short and single-line.
        self.detail = " ".join(detail.split())[:500]
        super().__init__(f"{reason}: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its two arguments (the compute process sends rejections back), not as
        # Exception's one message, which __init__ could not take.
        return (type(self), (self.reason, self.detail))


class TransientError(ScanStreamError):
    """A failure worth retrying (a fetch that timed out, a broker that was away)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
