"""The one reader: turns a reference event's URI into bytes (file://, http://, https://).

All file and network access of the pipeline happens here, so decoding stays a pure function of
bytes. The guarantees hold for any string, however hostile:

* Only :class:`Rejection` (final) or :class:`TransientError` (worth retrying: the deadline, 5xx,
  429, DNS failure, connection refused or reset) escape; a malformed URI is a ``fetch_error``.
* Only what the ``policy`` (:mod:`worker.references`) allows is read; anything else, and each
  redirect hop outside it, is ``reference_refused`` before it is opened or connected to.
* Reads are bounded as they stream: never more than ``max_bytes + 1`` bytes are read, whatever a
  size looked up beforehand (``stat``, Content-Length) said; more is ``too_large``.
* file:// reads regular files only (a symlink to one is followed): FIFOs, devices such as
  /dev/zero, directories and sockets are refused before they are opened, so nothing blocks.
* http(s):// has one whole-request deadline of ``timeout_s``: DNS, connect, TLS, headers, body and
  up to 5 redirects (to http/https only) together. A watchdog shuts the socket down at the
  deadline, so a server that drips a byte at a time is cut off too.
* WADO-RS: asks for the instance as stored, unwraps a multipart reply (:mod:`worker.dicomweb`).

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile(delete=False) as f:
...     _ = f.write(b"abc")
>>> here = ReferencePolicy.parse(("file://" + os.path.dirname(f.name), "file:///dev/"), "")
>>> fetch("file://" + f.name, max_bytes=10, timeout_s=1, policy=here)
b'abc'
>>> os.unlink(f.name)
>>> fetch("file:///dev/zero", max_bytes=10, timeout_s=1, policy=here)
Traceback (most recent call last):
    ...
worker.errors.Rejection: fetch_error: '/dev/zero' is not a regular file
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from worker.dicomweb import ACCEPT, instance_from_reply
from worker.errors import Rejection, ScanStreamError, TransientError
from worker.references import ReferencePolicy
from worker.references import show as _show

_CHUNK = 1 << 16
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PRINTABLE = "".join(map(chr, range(0x21, 0x7F)))  # kept as is in a request target
_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%:-]+\Z")  # reg-name or IP literal, after IDNA


def fetch(
    uri: str,
    max_bytes: int,
    timeout_s: float,
    sha256: str | None = None,
    *,
    policy: ReferencePolicy,
) -> bytes:
    """The bytes at ``uri`` (at most ``max_bytes``) within ``timeout_s``; see the module doc."""
    policy.check_any(uri)
    limit, timeout_s = max(max_bytes, 0), min(timeout_s, 86400.0)  # NaN stays NaN
    try:
        scheme = urllib.parse.urlsplit(uri).scheme
    except ValueError as exc:
        raise Rejection("fetch_error", f"malformed URI {_show(uri)}: {_brief(exc)}") from exc
    if scheme == "file":
        data = _read_file(uri, limit, time.monotonic() + timeout_s, policy)
    elif scheme in ("http", "https"):
        _target(uri)  # a malformed URI is a fetch_error, before the policy looks at it
        policy.check_web(uri)
        data = _read_http(uri, limit, timeout_s, policy)
    else:
        raise Rejection("fetch_error", f"unsupported URI scheme {scheme!r}")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise Rejection("fetch_error", f"content of {_show(uri)} does not match its sha256")
    return data


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _read_file(uri: str, limit: int, deadline: float, policy: ReferencePolicy) -> bytes:
    try:
        parts = urllib.parse.urlsplit(uri)
        path = urllib.parse.unquote_to_bytes(parts.path)  # UnicodeError on a lone surrogate
    except ValueError as exc:
        raise Rejection("fetch_error", f"malformed URI {_show(uri)}: {_brief(exc)}") from exc
    if not path.startswith(b"/") and not parts.netloc:
        raise Rejection("fetch_error", f"not an absolute file URI: {_show(uri)}")
    shown = _show(path.decode("utf-8", "replace"))
    if b"\0" in path:
        raise Rejection("fetch_error", f"malformed file path {shown}: an embedded NUL byte")
    too_large = Rejection("too_large", f"{shown} is larger than the limit of {limit} bytes")
    try:
        path, prefix = policy.resolve_file(uri, parts.netloc, path)  # the path as resolved
        # stat first: a FIFO or a device is never even opened (opening may block or act);
        # fstat after: what was opened, in case the path was swapped in between.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Rejection("fetch_error", f"{shown} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Rejection("fetch_error", f"{shown} is not a regular file")
            policy.check_opened(uri, fd, prefix, path)
            if info.st_size > limit:  # a short cut only: the bound below is the guarantee
                raise too_large
            return _drain(lambda n: os.read(fd, n), limit, too_large, lambda: _tick(deadline))
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        raise Rejection("fetch_error", f"file not found: {shown}") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise Rejection("fetch_error", f"malformed file path {shown}: {_brief(exc)}") from exc
    except OSError as exc:
        raise Rejection("fetch_error", f"cannot read {shown}: {exc.strerror or exc}") from exc


class _Clock:
    """One whole-request deadline: the time left for each step, and a watchdog on the socket."""

    def __init__(self, timeout_s: float, shown: str) -> None:
        self.shown, self.at = shown, time.monotonic() + timeout_s
        self.sock: socket.socket | None = None  # the socket the watchdog shuts down
        self.fired = False
        self.expired = TransientError(
            "fetch_error", f"{shown}: cut at the {timeout_s:g} s deadline"
        )
        self.timer = threading.Timer(timeout_s, self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        self.fired = True  # set before reading self.sock: see left()
        sock = self.sock
        if sock is not None:  # plain TCP shutdown, also under TLS: a blocked recv returns
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def left(self) -> float:
        """Seconds left; called after self.sock is set and before each blocking step."""
        left = self.at - time.monotonic()
        if self.fired or left <= 0:
            raise self.expired
        return left

    def failure(self, exc: Exception) -> ScanStreamError:
        if self.fired or isinstance(exc, TimeoutError) or time.monotonic() >= self.at:
            return self.expired
        # Network trouble (or no thread to spare) may pass; a refused certificate, a malformed
        # Location or response won't.
        passing = isinstance(exc, OSError | RuntimeError | http.client.IncompleteRead)
        kind = Rejection if isinstance(exc, ssl.SSLCertVerificationError) else TransientError
        return (kind if passing else Rejection)("fetch_error", f"{self.shown}: {_brief(exc)}")


def _read_http(uri: str, limit: int, timeout_s: float, policy: ReferencePolicy) -> bytes:
    if not timeout_s > 0:  # also NaN
        raise TransientError("fetch_error", f"{_show(uri)}: no time left before its deadline")
    clock, url = _Clock(timeout_s, _show(uri)), uri
    try:
        clock.timer.start()  # RuntimeError when no thread can start: transient
        for _ in range(_MAX_REDIRECTS + 1):  # each hop was checked by the policy
            location, data = _get(url, limit, clock, policy.headers())
            if location is None:
                return data
            url = policy.follow(uri, url, location)  # reference_refused: never connected to
    except (OSError, ValueError, RuntimeError, http.client.HTTPException) as exc:
        raise clock.failure(exc) from exc
    finally:
        clock.timer.cancel()
    raise Rejection("fetch_error", f"{_show(uri)}: too many redirects (over {_MAX_REDIRECTS})")


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, ASCII host, port, request target) of an http(s) URL, or a Rejection."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
        encoded = (parts.hostname or "").encode("idna")  # UnicodeError is a ValueError
        host = encoded.decode("idna") and encoded.decode("ascii")  # decoding checks xn-- labels
        target = urllib.parse.quote(parts.path or "/", safe=_PRINTABLE)
        if parts.query:
            target += "?" + urllib.parse.quote(parts.query, safe=_PRINTABLE)
    except ValueError as exc:
        raise Rejection("fetch_error", f"malformed URI {_show(url)}: {_brief(exc)}") from exc
    if parts.scheme not in ("http", "https"):
        raise Rejection("fetch_error", f"unsupported URI scheme {parts.scheme!r} in {_show(url)}")
    if not _HOST.match(host) or port == 0:
        raise Rejection("fetch_error", f"malformed URI {_show(url)}: no valid host and port")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _get(url: str, limit: int, clock: _Clock, extra: dict[str, str]) -> tuple[str | None, bytes]:
    """One GET: (a redirect's Location, b"") or (None, the body)."""
    scheme, host, port, target = _target(url)
    sock = _connect(host, port, clock)
    conn: http.client.HTTPConnection | None = None
    response: http.client.HTTPResponse | None = None
    try:
        if scheme == "https":
            sock = _tls().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            clock.sock = sock
            sock.settimeout(clock.left())
            sock.do_handshake()
            conn = http.client.HTTPSConnection(host, port, context=_tls())
        else:
            conn = http.client.HTTPConnection(host, port)
        conn.sock = sock  # connected already: http.client only speaks HTTP on it
        sock.settimeout(clock.left())
        headers = {"Accept": ACCEPT, "Connection": "close", **extra}  # WADO-RS, as stored
        conn.request("GET", target, headers=headers)
        sock.settimeout(clock.left())
        response = conn.getresponse()
        status = response.status
        if status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise Rejection("fetch_error", f"HTTP {status} without Location from {clock.shown}")
            return location, b""
        if status >= 500 or status == 429:
            raise TransientError("fetch_error", f"HTTP {status} from {clock.shown}")
        if not 200 <= status < 300:
            raise Rejection("fetch_error", f"HTTP {status} from {clock.shown}")
        declared = response.length  # Content-Length; None when chunked or absent
        too_large = Rejection("too_large", f"{clock.shown} is larger than the limit of {limit} B")
        if declared is not None and declared > limit:
            raise too_large
        data = _drain(response.read1, limit, too_large, lambda: sock.settimeout(clock.left()))
        clock.left()  # the watchdog's shutdown looks like the end of the body
        if declared is not None and len(data) < declared:
            raise TransientError("fetch_error", f"{clock.shown}: body cut at {len(data)} B")
        return None, instance_from_reply(response.getheader("Content-Type"), data, clock.shown)
    finally:
        clock.sock = None
        if response is not None:
            response.close()
        if conn is not None:
            conn.close()
        sock.close()


def _connect(host: str, port: int, clock: _Clock) -> socket.socket:
    error: OSError = ConnectionError(f"no address for {host!r}")
    for family, kind, proto, _, address in _resolve(host, port, clock):
        left = clock.left()
        sock = socket.socket(family, kind, proto)
        clock.sock = sock
        try:
            sock.settimeout(left)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
        else:
            return sock
    raise error


def _resolve(host: str, port: int, clock: _Clock) -> Any:
    """getaddrinfo within the deadline: a name is looked up in a thread that may be left behind."""
    with contextlib.suppress(socket.gaierror):  # an address literal needs no lookup
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, ValueError) as exc:
            box.append(exc)

    thread = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    thread.start()
    thread.join(clock.left())
    if not box:
        raise TimeoutError(f"the DNS lookup of {host!r} outlasted the deadline")
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _tick(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TransientError("fetch_error", "reading the file outlasted its deadline")


def _drain(
    read: Callable[[int], bytes], limit: int, too_large: Rejection, tick: Callable[[], object]
) -> bytes:
    """read(n) until it returns b"", raising too_large as soon as more than limit bytes came."""
    chunks: list[bytes] = []
    total = 0
    while True:
        tick()
        chunk = read(min(_CHUNK, limit + 1 - total))  # read1: returns after one recv
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
