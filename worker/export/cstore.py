"""C-STORE to a ``dicom://AET@host:port`` SCP: one association, kept open between sends and
reopened once it is gone; how a C-STORE status is judged is tabled in
:mod:`worker.export.destinations`."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Final

import pydicom
import pydicom.uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from pynetdicom.transport import AddressInformation, AssociationSocket

from worker.errors import ConfigError
from worker.export import Failed, Rejected, SendResult, Sent, Unreachable
from worker.export.spec import DestinationSpec, brief, read_dicom

_SR = ("Comprehensive3DSRStorage", "ComprehensiveSRStorage", "EnhancedSRStorage")
SR_STORAGE: Final = tuple(
    str(getattr(pydicom.uid, name)) for name in (*_SR, "BasicTextSRStorage", "ExtensibleSRStorage")
)
WARNINGS: Final = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
NOT_AUTHORISED, SOP_CLASS_NOT_SUPPORTED = 0x0124, 0x0122


def classify_c_store(status: int, comment: str = "") -> SendResult:
    """A C-STORE response status as a result (see the table in
    :mod:`worker.export.destinations`).

    >>> classify_c_store(0xB000)
    Sent(status=45056, detail='C-STORE status 0xB000 (Coercion of Data Elements)')
    >>> classify_c_store(0xA700, "disk full")
    Failed(status=42752, detail='C-STORE status 0xA700 (Refused: Out of Resources): disk full')
    """
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "unknown status"))[1] or "Success"
    detail = " ".join(f"C-STORE status 0x{status:04X} ({meaning}): {comment}".split())
    detail = detail.rstrip(":")[:300]
    if status == 0x0000 or status in WARNINGS:
        return Sent(status, "" if status == 0 else detail)
    if 0xA700 <= status <= 0xA7FF or status in (0x0213, 0xFE00):
        return Failed(status, detail)
    if status == NOT_AUTHORISED:
        return Unreachable(f"{detail}; check SCANSTREAM_EXPORT_CALLING_AE_TITLE")
    return Rejected(status, detail)


class _Socket(AssociationSocket):
    def _shutdown_socket(self) -> None:
        # pynetdicom 3.0 skips close() when shutdown() fails (a refused connect): a leak.
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
            self.socket.close()


class _AE(AE):
    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = _Socket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


class CStoreDestination:
    """A C-STORE SCU to one SCP; not thread-safe (one exporter loop uses it)."""

    def __init__(self, spec: DestinationSpec, calling_ae_title: str, timeout_s: float) -> None:
        self.spec, self.name = spec, spec.name
        try:
            self.ae = _AE(ae_title=calling_ae_title)
        except ValueError as exc:
            raise ConfigError(f"SCANSTREAM_EXPORT_CALLING_AE_TITLE: {exc}") from exc
        for knob in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, knob, timeout_s)
        syntaxes = [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian]
        for uid in SR_STORAGE:
            self.ae.add_requested_context(uid, syntaxes)
        self._assoc: Association | None = None

    def send(self, data: bytes) -> SendResult:
        ds = read_dicom(data)
        if isinstance(ds, Rejected):
            return ds
        if str(ds.SOPClassUID) not in SR_STORAGE:
            return Rejected(0, f"SOP class {ds.SOPClassUID} is not an SR storage class (not sent)")
        reused = self._assoc is not None and self._assoc.is_established
        for _ in range(2 if reused else 1):  # a kept association may have died unseen: once more
            assoc = self._association()
            if isinstance(assoc, Unreachable):
                return assoc
            result = self._store(assoc, ds)
            if result is not None:
                return result
            self.close()
        return Unreachable(f"{self.name}: no C-STORE response (association dropped or timed out)")

    def _association(self) -> Association | Unreachable:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        self.close()
        spec = self.spec
        assoc = self.ae.associate(spec.host, spec.port, ae_title=spec.ae_title)
        if assoc.is_established:
            self._assoc = assoc
            return assoc
        answer = assoc.acceptor.primitive
        if answer is None:
            why = "no association (connection refused or timed out)"
        elif assoc.is_rejected:
            why = f"association rejected ({answer.result_str}, {answer.source_str}: "
            why += f"{answer.reason_str})"
        elif answer.result == 0 and not assoc.accepted_contexts:
            why = "association aborted: none of the SR storage SOP classes proposed was accepted"
        else:
            why = "association aborted"
        return Unreachable(f"{self.name}: {why}")

    def _store(self, assoc: Association, ds: pydicom.Dataset) -> SendResult | None:
        """The result of one C-STORE, or None where no response came."""
        try:
            reply = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted context, or not encodable in the accepted one
            if not any(c.abstract_syntax == ds.SOPClassUID for c in assoc.accepted_contexts):
                why = f"{self.name} accepted no presentation context for {ds.SOPClassUID.name}"
                return Rejected(SOP_CLASS_NOT_SUPPORTED, why)
            return Rejected(0, f"cannot encode the SR for the accepted context: {brief(exc)}")
        except AttributeError as exc:  # a required element is missing
            return Rejected(0, f"not sendable (not sent): {brief(exc)}")
        except (RuntimeError, OSError):  # the association went away under us
            return None
        if "Status" not in reply:
            return None
        return classify_c_store(int(reply.Status), str(reply.get("ErrorComment", "")))

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        if assoc.is_established:
            assoc.release()
        if assoc.is_alive():
            assoc.abort()
