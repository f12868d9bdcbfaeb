"""The STOW-RS receiver (PS3.18 10.5): DICOM instances by HTTP POST, one durable event each.

``POST /studies`` or ``POST /studies/{StudyInstanceUID}`` (also under ``/dicom-web``), with
``Content-Type: multipart/related; type="application/dicom"; boundary=...`` and a
Content-Length (at most 4 x ``SCANSTREAM_MAX_MESSAGE_BYTES``, else 413; none: 411). Each
``application/dicom`` part goes through :meth:`DurablePublisher.store`, and the reply is sent
only once every stored part was acknowledged by the broker. The reply is an
``application/dicom+json`` dataset: ReferencedSOPSequence (0008,1199) lists what was stored,
FailedSOPSequence (0008,1198) what was not, with a FailureReason (0008,1197):

* ``0xA700`` out of resources: not acknowledged in time (the broker is away); once one part
  fails so, the rest of the request fails so too without waiting (the client retries them);
* ``0xA900`` the instance's StudyInstanceUID differs from the one in the URL;
* ``0xC000`` cannot understand: not an ``application/dicom`` part, or no Study/SOP Instance UID
  or SOP Class UID in its header (nothing is published for it).

HTTP status: 200 all stored; 202 some stored; 503 with Retry-After none stored and every failure
``0xA700`` (send it all again later); 409 none stored otherwise. 400 a malformed body, 401 a
missing or wrong Authorization when ``SCANSTREAM_GATEWAY_HTTP_AUTH`` is set, 404 another path,
405 another method, 415 another Content-Type, 503 while ``SCANSTREAM_GATEWAY_MAX_ASSOCIATIONS``
requests are in progress. One log line per request: status and counts; never headers or bodies.

>>> expected_authorization("basic user:pass")
Secret('***')
>>> expected_authorization("bearer T0KEN").reveal()
'Bearer T0KEN'
>>> failed = InstanceHeader("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2")
>>> stow_response([], [(failed, OUT_OF_RESOURCES)])["00081198"]["Value"][0]["00081197"]
{'vr': 'US', 'Value': [42752]}
"""

from __future__ import annotations

import base64
import email.message
import hmac
import http.server
import json
import logging
import math
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from worker.dicomweb import MultipartError, parse_multipart_related
from worker.errors import ConfigError
from worker.gateway.durable import DurablePublisher, NotDurable
from worker.gateway.studies import StudyTracker
from worker.runtime.publisher import InstanceHeader
from worker.settings import Secret, Settings

log = logging.getLogger(__name__)

OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
READ_TIMEOUT_S = 30.0
DICOM_JSON = "application/dicom+json"
_PATH = re.compile(r"(?:/dicom-web)?/studies(?:/([0-9]+(?:\.[0-9]+)*))?/?")
_TOKEN = re.compile(r"[\x21-\x7e]+\Z")


def expected_authorization(raw: str) -> Secret | None:
    """The Authorization header value ``basic USER:PASSWORD`` or ``bearer TOKEN`` asks for."""
    if not raw:
        return None
    kind, _, value = raw.strip().partition(" ")
    kind, value = kind.lower(), value.strip()
    if kind == "bearer" and _TOKEN.match(value):
        return Secret(f"Bearer {value}")
    if kind == "basic" and value.partition(":")[0] and ":" in value and value.isprintable():
        return Secret("Basic " + base64.b64encode(value.encode()).decode("ascii"))
    raise ConfigError(
        "SCANSTREAM_GATEWAY_HTTP_AUTH (or _FILE) must be 'basic USER:PASSWORD' or 'bearer "
        "TOKEN' (printable ASCII, no spaces); the value set is neither (not shown)"
    )


def authorized(got: str | None, expected: Secret) -> bool:
    """Whether header value ``got`` is ``expected`` (scheme in any case; constant time)."""
    scheme, _, credentials = (got or "").strip().partition(" ")
    want_scheme, _, want = expected.reveal().partition(" ")
    same = hmac.compare_digest(credentials.encode("latin-1", "replace"), want.encode())
    return same and scheme.lower() == want_scheme.lower()


def stow_response(
    stored: list[InstanceHeader], failed: list[tuple[InstanceHeader, int]]
) -> dict[str, Any]:
    """The PS3.18 STOW-RS response dataset in the DICOM JSON model (PS3.18 F.2)."""

    def item(h: InstanceHeader) -> dict[str, Any]:
        uids = {"00081150": h.sop_class_uid, "00081155": h.sop_uid}
        return {tag: {"vr": "UI", **({"Value": [v]} if v else {})} for tag, v in uids.items()}

    out: dict[str, Any] = {}
    if failed:
        items = [{**item(h), "00081197": {"vr": "US", "Value": [r]}} for h, r in failed]
        out["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": [item(h) for h in stored]}
    return out


class StowServer:
    """The HTTP server in a daemon thread; ``port`` is the bound port, ``close()`` ends it."""

    def __init__(
        self, settings: Settings, publisher: DurablePublisher, tracker: StudyTracker
    ) -> None:
        self.settings, self.publisher, self.tracker = settings, publisher, tracker
        self.expected = expected_authorization(settings.gateway_http_auth.reveal())
        self.max_body = settings.max_message_bytes * 4
        self._busy, self._closing, self._idle = 0, False, threading.Condition()
        self._refusing = 0  # requests answered without a slot (503 busy, 405), still logging
        self._httpd = http.server.ThreadingHTTPServer(
            (settings.gateway_host, settings.gateway_http_port), _Handler
        )
        self._httpd.daemon_threads = True
        self._httpd.stow = self  # type: ignore[attr-defined]
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.name = f"stow-{self.port}"
        self._thread.start()

    def enter(self, refusal: bool = False) -> bool:
        """Take a request slot: True. False when all are in use, the server is closing, or
        ``refusal`` (a request answered without storing anything): it is counted apart, taking
        no slot. Either way, call :meth:`leave` with what this returned once the request's log
        line is written: :meth:`close` waits for both kinds."""
        with self._idle:
            if refusal or self._closing or self._busy >= self.settings.gateway_max_associations:
                self._refusing += 1
                return False
            self._busy += 1
            return True

    def leave(self, slot: bool = True) -> None:
        with self._idle:
            if slot:
                self._busy -= 1
            else:
                self._refusing -= 1
            self._idle.notify_all()

    def store_all(
        self, parts: list[tuple[str, bytes]], study: str | None
    ) -> tuple[list[InstanceHeader], list[tuple[InstanceHeader, int]]]:
        """Store each part in order: (stored, [(failed, failure reason)])."""
        stored: list[InstanceHeader] = []
        failed: list[tuple[InstanceHeader, int]] = []
        for media, data in parts:
            h = InstanceHeader.read(data)
            if media != "application/dicom" or not (h.study_uid and h.sop_uid and h.sop_class_uid):
                failed.append((h, CANNOT_UNDERSTAND))
            elif study is not None and h.study_uid != study:
                failed.append((h, DOES_NOT_MATCH))
            elif any(r == OUT_OF_RESOURCES for _, r in failed):  # the broker is away: fail fast
                failed.append((h, OUT_OF_RESOURCES))
            else:
                deadline = time.monotonic() + self.settings.gateway_ack_timeout_s
                try:
                    done = self.publisher.store(data, deadline)
                except (NotDurable, OSError) as exc:
                    log.warning("STOW-RS instance not stored: %s", type(exc).__name__)
                    failed.append((h, OUT_OF_RESOURCES))
                    continue
                h = done.header
                self.tracker.note(
                    h.study_uid, h.series_uid, h.sop_uid, h.sop_class_uid, done.event_id
                )
                stored.append(h)
        return stored, failed

    def close(self) -> None:
        """Stop taking requests; wait (up to the ack timeout) for those in progress."""
        with self._idle:
            self._closing = True  # no new request gets a slot
            self._idle.wait_for(
                lambda: not (self._busy or self._refusing), self.settings.gateway_ack_timeout_s + 5
            )
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "scanstream-stow"
    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue"; every reply closes anyway
    timeout = READ_TIMEOUT_S  # the socket's: a stalled client cannot hold a thread forever
    _unread: int | None = None  # body bytes still in the socket (None: unknown, leave them)

    def do_POST(self) -> None:
        stow: StowServer = self.server.stow  # type: ignore[attr-defined]
        counts = {"parts": 0, "stored": 0, "failed": 0}
        length = self._length()
        self._unread = length if length is not None and length <= stow.max_body else None
        slot = stow.enter()
        try:
            if not slot:
                status = self._text(503, "busy or stopping", {"Retry-After": "1"})
            else:
                try:
                    status = self._post(stow, counts)
                except Exception:  # a bug must not kill the thread silently
                    log.exception("STOW-RS internal error")
                    status = self._text(500, "internal error")
            # Logged before the slot (or refusal) is let go, so close() waits for the line too.
            log.info("STOW-RS %s", status, extra={"fields": {"status": status, **counts}})
        finally:
            stow.leave(slot)

    def _post(self, stow: StowServer, counts: dict[str, int]) -> int:
        path = _PATH.fullmatch(urlsplit(self.path).path)
        if path is None:
            return self._text(404, "not a STOW-RS path: POST /studies[/{StudyInstanceUID}]")
        expected = stow.expected
        if expected is not None and not authorized(self.headers.get("Authorization"), expected):
            challenge = {"WWW-Authenticate": f'{expected.reveal().split()[0]} realm="scanstream"'}
            return self._text(401, "authorization required", challenge)
        ctype = self.headers.get("Content-Type", "")
        head = email.message.Message()
        head["Content-Type"] = ctype
        kind = head.get_param("type")
        if head.get_content_type() != "multipart/related" or (
            kind is not None and str(kind).lower() != "application/dicom"
        ):
            return self._text(415, 'send multipart/related; type="application/dicom"')
        if "Content-Length" not in self.headers or "Transfer-Encoding" in self.headers:
            return self._text(411, "a Content-Length is required")
        if (length := self._length()) is None:
            return self._text(400, "the Content-Length is not a number")
        if length > stow.max_body:
            return self._text(413, f"the body is above {stow.max_body} bytes")
        body = self._body(length)
        if body is None:
            return 408  # logged only: the connection is closed without a reply
        try:
            parts = parse_multipart_related(ctype, body)
        except MultipartError as exc:
            return self._text(400, f"malformed multipart/related body: {exc}")
        study = path.group(1)
        stored, failed = stow.store_all(parts, study)
        counts.update(parts=len(parts), stored=len(stored), failed=len(failed))
        status, headers = 200 if not failed else 202 if stored else 409, {}
        if status == 409 and all(r == OUT_OF_RESOURCES for _, r in failed):
            status = 503  # only the broker was missing: the same request may succeed later
            headers["Retry-After"] = str(math.ceil(stow.settings.gateway_ack_timeout_s))
        body = json.dumps(stow_response(stored, failed)).encode()
        self._reply(status, body, DICOM_JSON, headers)
        return status

    def _length(self) -> int | None:
        raw = self.headers.get("Content-Length", "").strip()
        return int(raw) if raw.isdigit() and raw.isascii() else None

    def _body(self, length: int, keep: bool = True) -> bytes | None:
        """``length`` bytes of body (None: the client stalled or went away); or discard them."""
        chunks, left = [], length
        try:
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 20))):
                left -= len(chunk)
                chunks += [chunk] if keep else []
        except OSError:  # TimeoutError included: READ_TIMEOUT_S without a byte
            left = -1
        self._unread = 0
        return b"".join(chunks) if left == 0 else None

    def _text(self, status: int, text: str, headers: dict[str, str] | None = None) -> int:
        if self._unread:  # read what the client sent, so that closing does not reset it
            self._body(self._unread, keep=False)
        self._reply(status, text.encode() + b"\n", "text/plain; charset=utf-8", headers or {})
        return status

    def _reply(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.close_connection = True
        try:
            self.send_response(status)
            for name, value in {"Content-Type": ctype, **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:
            log.info("STOW-RS reply not delivered: %s", type(exc).__name__)

    def do_GET(self) -> None:
        stow: StowServer = self.server.stow  # type: ignore[attr-defined]
        self._unread = None
        slot = stow.enter(refusal=True)  # no slot taken; close() waits for the line all the same
        try:
            status = self._text(405, "STOW-RS takes POST only", {"Allow": "POST"})
            fields = {"status": status, "method": self.command}
            log.info("STOW-RS %s", status, extra={"fields": fields})
        finally:
            stow.leave(slot)

    do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass  # the one line per request above; the default would print the path to stderr


def serve_stow(
    settings: Settings, publisher: DurablePublisher, tracker: StudyTracker
) -> StowServer:
    """Start the receiver on (gateway_host, gateway_http_port); port 0 takes a free one."""
    return StowServer(settings, publisher, tracker)
