"""The two kinds of destination ``SCANSTREAM_EXPORT_TO`` may name, and how an answer is judged.

``dicom://AET@host:port`` is a C-STORE SCP: one association, kept open between sends and
reopened once it is gone; SR storage SOP classes in Explicit and Implicit VR Little Endian.
``http(s)://host[:port]/path`` is a DICOMweb root: one STOW-RS POST to ``root/studies`` per SR,
no proxy, no redirect followed, TLS verified, ``Authorization`` from ``SCANSTREAM_EXPORT_AUTH``.

=============  ==========================================  ====================================
result         C-STORE                                     STOW-RS
=============  ==========================================  ====================================
Sent           0x0000; warnings 0x0001 0x0107 0x0116       2xx, no FailedSOPSequence entry
               0xB000 0xB006 0xB007
Rejected       0xA9xx 0xCxxx 0x0122 and other failures;    400 404 405 406 409 413 415 422,
               no accepted presentation context for the    other 4xx; a FailedSOPSequence entry
               SR's SOP class (0x0122)                     (status: its FailureReason)
Failed         0xA7xx 0x0213 0xFE00                        500 and other 5xx; a FailureReason
                                                           0xA7xx; a 2xx whose reply lists the
                                                           SR neither as stored nor as failed
Unreachable    no association (refused, rejected,          3xx, 401 403 407 408 429 502 503 504,
               aborted, timed out), no response, 0x0124    connection errors, timeouts
=============  ==========================================  ====================================

0x0124 (not authorised) refuses the caller, not the record: like HTTP 401/403 it is the
destination's state. Bytes pydicom cannot read as a Part 10 file are ``Rejected`` with status
0 (never sent: no destination status exists). Orthanc 1.10.1 answers any storage failure it
hits, a Lua ``ReceivedInstanceFilter`` that raises included, with 0xA700 (``Failed``) and, over
STOW-RS, 200 without the instance in either sequence (``Failed`` too); a filter returning false
is answered as stored (``Sent``). Details are single-line, short and never hold credentials.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, Literal

import pydicom
import pydicom.uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from pynetdicom.transport import AddressInformation, AssociationSocket

from worker.dicomweb import build_multipart_related
from worker.errors import ConfigError
from worker.export import Destination, Failed, Rejected, SendResult, Sent, Unreachable
from worker.references import authorization_value, show
from worker.settings import Secret, Settings

TO, AUTH = "SCANSTREAM_EXPORT_TO", "SCANSTREAM_EXPORT_AUTH"
FORMS: Final = "dicom://AET@host:port or http(s)://host[:port]/path (the DICOMweb root)"
_SR = ("Comprehensive3DSRStorage", "ComprehensiveSRStorage", "EnhancedSRStorage")
SR_STORAGE: Final = tuple(
    str(getattr(pydicom.uid, name)) for name in (*_SR, "BasicTextSRStorage", "ExtensibleSRStorage")
)
WARNINGS: Final = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
NOT_AUTHORISED, SOP_CLASS_NOT_SUPPORTED = 0x0124, 0x0122
MAX_REPLY: Final = 1024 * 1024
_AET = re.compile(r"[!-~](?:[ -~]{0,14}[!-~])?\Z")  # 1-16 printable ASCII, no edge spaces
_URL = re.compile(r"[!-~]+\Z")  # printable ASCII without spaces


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


def parse_destination(url: str) -> DestinationSpec:
    """Parse ``SCANSTREAM_EXPORT_TO``; a ConfigError names the variable and the forms.

    >>> parse_destination("dicom://ORTHANC@127.0.0.1:4242").name
    'dicom://ORTHANC@127.0.0.1:4242'
    >>> parse_destination("http://pacs:8042/dicom-web/").stow_url
    'http://pacs:8042/dicom-web/studies'
    >>> parse_destination("https://u:p@pacs/dicom-web")
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: SCANSTREAM_EXPORT_TO='https://***@pacs/dicom-web' holds \
credentials; put them in SCANSTREAM_EXPORT_AUTH instead
    """
    scheme = url.partition(":")[0].lower()
    bad = f"{TO}={repr(url[:200]) if scheme == 'dicom' else show(url)}"  # show hides userinfo
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{bad} is not a valid URL; use {FORMS}") from exc
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{bad} has a query or fragment; use {FORMS}")
    if scheme == "dicom":
        aet, at, hostport = parts.netloc.rpartition("@")
        host = urllib.parse.urlsplit("//" + hostport).hostname or ""
        valid = at and _AET.match(aet) and "\\" not in aet and _URL.match(hostport)
        if not valid or not host or not port:
            raise ConfigError(f"{bad}: use dicom://AET@host:port (AE title of 1-16 characters)")
        if parts.path not in ("", "/"):
            raise ConfigError(f"{bad} has a path; use dicom://AET@host:port")
        return DestinationSpec("dicom", host.lower(), port, ae_title=aet)
    if scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise ConfigError(f"{bad} holds credentials; put them in {AUTH} instead")
        if not _URL.match(url):
            raise ConfigError(f"{bad} has spaces or non-ASCII characters; percent-encode them")
        if not parts.hostname or port == 0:
            raise ConfigError(f"{bad} has no valid host; use {scheme}://host[:port]/path")
        root = f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
        default = 443 if scheme == "https" else 80
        return DestinationSpec("stow", parts.hostname, port or default, url=root)
    raise ConfigError(f"{bad}: use {FORMS}")


def open_destination(settings: Settings) -> Destination:
    """The destination ``settings.export_to`` names; nothing is contacted yet."""
    if not settings.export_to:
        raise ConfigError(f"{TO} is not set; set it to {FORMS}")
    spec = parse_destination(settings.export_to)
    authorization = authorization_value(settings.export_auth.reveal(), AUTH)
    if spec.kind == "dicom":
        if authorization:
            raise ConfigError(f"{AUTH} is for http(s) destinations; C-STORE has none: unset it")
        return CStoreDestination(spec, settings.export_calling_ae_title, settings.export_timeout_s)
    return StowDestination(spec, authorization, settings.export_timeout_s)


def _brief(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _read(data: bytes) -> pydicom.Dataset | Rejected:
    try:
        ds = pydicom.dcmread(BytesIO(data))
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:  # noqa: BLE001 - any parse failure: the record is not DICOM
        return Rejected(0, f"not a DICOM file (not sent): {_brief(exc)}")
    return ds


def classify_c_store(status: int, comment: str = "") -> SendResult:
    """A C-STORE response status as a result (see the table in the module doc).

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
        ds = _read(data)
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
            return Rejected(0, f"cannot encode the SR for the accepted context: {_brief(exc)}")
        except AttributeError as exc:  # a required element is missing
            return Rejected(0, f"not sendable (not sent): {_brief(exc)}")
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


def _tags(body: bytes) -> dict[str, Any] | None:
    """A STOW-RS reply's DICOM JSON object (or the first of a list), else None."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, list) and doc:
        doc = doc[0]
    return doc if isinstance(doc, dict) else None


def _items(doc: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = doc.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _snippet(body: bytes) -> str:
    text = " ".join(body[:400].decode("utf-8", "replace").split())[:120]
    return f": {text}" if text else ""


def classify_stow(status: int, body: bytes, sop_uid: str) -> SendResult:
    """A STOW-RS reply (HTTP status, at most :data:`MAX_REPLY` bytes of body) for the SR
    ``sop_uid`` as a result (see the table in the module doc).

    >>> classify_stow(200, b"", "1.2")
    Sent(status=200, detail='')
    >>> classify_stow(401, b"", "1.2").detail
    'STOW-RS HTTP 401: check SCANSTREAM_EXPORT_AUTH'
    """
    head = f"STOW-RS HTTP {status}"
    if 300 <= status < 400:
        return Unreachable(f"{head}: redirected; set {TO} to the final URL")
    doc = _tags(body) if body else None
    failed = _items(doc, "00081198") if doc is not None else []
    reason = _first(failed[0], "00081197") if failed else None
    code = reason if isinstance(reason, int) and not isinstance(reason, bool) else None
    given = "not given" if code is None else f"0x{code:04X}"
    why = f"{head}: FailedSOPSequence FailureReason {given}" if failed else ""
    if failed and (200 <= status < 300 or status == 409):
        if code is not None and 0xA700 <= code <= 0xA7FF:  # out of resources
            return Failed(code, why)
        return Rejected(status if code is None else code, why)
    if 200 <= status < 300:
        stored = [_first(i, "00081155") for i in _items(doc or {}, "00081199")]
        if doc is not None and "00081199" in doc and sop_uid not in stored:
            why = "the SR is neither in its ReferencedSOPSequence nor in its FailedSOPSequence"
            return Failed(status, f"{head}: {why}")
        warning = _first(doc, "00081196") if doc is not None else None
        return Sent(status, f"{head}: WarningReason {warning}" if warning is not None else "")
    if status in (401, 403):
        return Unreachable(f"{head}: check {AUTH}")
    if status in (407, 408, 429):
        meaning = {407: "proxy authentication wanted", 408: "timeout", 429: "throttled"}
        return Unreachable(f"{head}: {meaning[status]}")
    if 400 <= status < 500:
        return Rejected(status, why or f"{head}{_snippet(body)}"[:300])
    if status in (502, 503, 504):
        return Unreachable(f"{head}{_snippet(body)}"[:300])
    if 500 <= status < 600:
        return Failed(status, f"{head}{_snippet(body)}"[:300])
    return Unreachable(f"{head}: not an answer STOW-RS gives")


class StowDestination:
    """STOW-RS to one DICOMweb root: one request per SR, on a connection of its own."""

    def __init__(self, spec: DestinationSpec, authorization: Secret, timeout_s: float) -> None:
        self.spec, self.name, self.timeout_s = spec, spec.name, timeout_s
        self._authorization = authorization
        self._path = urllib.parse.urlsplit(spec.stow_url).path
        self._tls = ssl.create_default_context() if spec.url.startswith("https:") else None
        # Whatever the peer echoes, no detail shows the header value or the credentials in it.
        value = authorization.reveal()
        kind, _, credential = value.partition(" ")
        hidden = {value, credential}
        if kind == "Basic":
            with contextlib.suppress(ValueError):  # not base64: nothing more to hide
                pair = base64.b64decode(credential).decode("utf-8", "replace")
                hidden |= {pair, pair.partition(":")[2]}
        self._hidden = sorted((h for h in hidden if len(h) >= 4), key=len, reverse=True)

    def send(self, data: bytes) -> SendResult:
        ds = _read(data)
        if isinstance(ds, Rejected):
            return ds
        content_type, body = build_multipart_related([data])
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if self._authorization:
            headers["Authorization"] = self._authorization.reveal()
        deadline = time.monotonic() + self.timeout_s
        host, port, timeout = self.spec.host, self.spec.port, self.timeout_s
        conn = (
            http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
            if self._tls is not None
            else http.client.HTTPConnection(host, port, timeout=timeout)
        )
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            reply = self._drain(conn, response, deadline)
            result = classify_stow(response.status, reply, str(ds.SOPInstanceUID))
        except ssl.SSLCertVerificationError as exc:
            result = Unreachable(f"{self.name}: TLS certificate not trusted: {exc.verify_message}")
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, timeout, TLS
            result = Unreachable(f"{self.name}: {_brief(exc)}")
        finally:
            conn.close()
        return self._scrub(result)

    @staticmethod
    def _drain(
        conn: http.client.HTTPConnection, response: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        """At most MAX_REPLY bytes of the body, all within the deadline."""
        chunks, size = [], 0
        while size < MAX_REPLY:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the reply outlasted SCANSTREAM_EXPORT_TIMEOUT_S")
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = response.read1(MAX_REPLY - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _scrub(self, result: SendResult) -> SendResult:
        detail = result.detail
        for hidden in self._hidden:
            detail = detail.replace(hidden, "***")
        return result if detail == result.detail else dataclasses.replace(result, detail=detail)

    def close(self) -> None:
        """Nothing is held between sends."""
