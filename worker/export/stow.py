"""STOW-RS to an ``http(s)://`` DICOMweb root: one POST to ``root/studies`` per SR, on a
connection of its own; how a reply is judged is tabled in :mod:`worker.export.destinations`."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import ssl
import time
import urllib.parse
from typing import Any, Final

from worker.dicomweb import build_multipart_related
from worker.export import Failed, Rejected, SendResult, Sent, Unreachable
from worker.export.spec import AUTH, TO, DestinationSpec, brief, read_dicom
from worker.settings import Secret

MAX_REPLY: Final = 1024 * 1024


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
    ``sop_uid`` as a result (see the table in :mod:`worker.export.destinations`).

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
        ds = read_dicom(data)
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
            result = Unreachable(f"{self.name}: {brief(exc)}")
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
