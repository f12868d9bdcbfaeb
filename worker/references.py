"""What reference events may point at: the operator's allow-list, and the credentials to send.

:mod:`worker.fetch` reads a reference URI only if this policy allows it; a refusal is a
``reference_refused`` dead letter, decided before any file or connection to the target is opened.

* ``SCANSTREAM_REFERENCE_ALLOW``: comma-separated URI prefixes, ``file:///abs/dir/`` or
  ``http(s)://host[:port]/path``. Empty (the default): every reference event is refused.
* A prefix matches on path-segment boundaries: ``file:///data/in`` allows ``/data/in`` and
  ``/data/in/x`` but not ``/data/in2/x``.
* file://: a URI with any host (``localhost`` too) is refused. Both the prefix and the requested
  path are compared after resolving symlinks and ``..`` (``os.path.realpath``); once the file is
  open, what was opened is checked again (``/proc/self/fd``), so a symlink swapped in between
  cannot escape. Only regular files are read (``fetch_error`` otherwise).
* http(s)://: scheme, host (case-insensitive) and port (default 80/443) must equal a prefix's and
  the path must lie under its path. Userinfo in the URI, dot-segments (``/../``, ``/./``, also
  percent-encoded) and encoded separators (``%2f``, ``\\``) are refused. Every redirect hop is
  checked before it is connected to; a redirect outside the prefixes is refused, and the detail
  never names the Location.
* ``SCANSTREAM_REFERENCE_AUTH`` (or ``_FILE``): ``basic USER:PASSWORD`` or ``bearer TOKEN``, sent
  as the Authorization header to allowed http(s) prefixes only (so never to a refused hop). It
  never appears in a repr, a log, an exception or a dead letter.

Details of a refusal quote the event's URI (credentials masked) and the rule, never anything
learned about the target (resolved path, link target, existence, HTTP status, Location).

>>> policy = ReferencePolicy.parse(("https://pacs.example/dicom-web/",), "bearer T0KEN")
>>> policy
ReferencePolicy(allow=('https://pacs.example/dicom-web/',), authorization=Secret('***'))
>>> policy.check_web("https://PACS.example:443/dicom-web/studies/1")
>>> policy.check_web("https://pacs.example/dicom-web/../admin")
Traceback (most recent call last):
    ...
worker.errors.Rejection: reference_refused: 'https://pacs.example/dicom-web/../admin': \
dot-segments or encoded separators in the path are refused
>>> ReferencePolicy.parse((), "").check_web("https://pacs.example/dicom-web/x")
Traceback (most recent call last):
    ...
worker.errors.Rejection: reference_refused: 'https://pacs.example/dicom-web/x': reference events \
are refused: SCANSTREAM_REFERENCE_ALLOW is empty
>>> ReferencePolicy.parse(("file://host/data/",), "")
Traceback (most recent call last):
    ...
worker.errors.ConfigError: SCANSTREAM_REFERENCE_ALLOW: 'file://host/data/' has a host; a file \
prefix is file:///absolute/folder/
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AnyStr

from worker.errors import ConfigError, Rejection
from worker.settings import Secret

if TYPE_CHECKING:
    from worker.settings import Settings

ALLOW, AUTH = "SCANSTREAM_REFERENCE_ALLOW", "SCANSTREAM_REFERENCE_AUTH"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_AMBIGUOUS = re.compile(r"%2f|%5c|\\", re.IGNORECASE)  # separators a server may decode
_TOKEN = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII, no space: cannot split a header


def show(uri: str) -> str:
    """A URI for a detail: credentials dropped, quoted, short."""
    text = re.sub(r"//[^/?#]*@", "//***@", str(uri))
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _refuse(uri: str, why: str) -> Rejection:
    return Rejection("reference_refused", f"{show(uri)}: {why}")


def _under(path: AnyStr, prefix: AnyStr) -> bool:
    """``path`` is ``prefix`` or below it, on segment boundaries (both normalised)."""
    return path == prefix or path.startswith(posixpath.join(prefix, prefix[:0]))  # adds a "/"


def _dot_segments(path: str) -> bool:
    segments = [urllib.parse.unquote(s) for s in path.split("/")]
    return any(s in (".", "..") for s in segments) or bool(_AMBIGUOUS.search(path))


def _host(name: str) -> str:
    try:
        return name.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return name.lower()


@dataclass(frozen=True)
class _Web:
    scheme: str
    host: str
    port: int
    path: str  # percent-decoded, "/" at least


def _parse_prefix(prefix: str) -> bytes | _Web:
    """A file prefix as a normalised absolute path (bytes), or an http(s) prefix."""
    bad = f"{ALLOW}: {show(prefix)}"
    try:
        parts = urllib.parse.urlsplit(prefix)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{bad} is not a URI; use file:///dir/ or https://host/path/") from exc
    if parts.query or parts.fragment or prefix.endswith(("?", "#")):
        raise ConfigError(f"{bad} has a query or fragment; give a path prefix only")
    if parts.scheme == "file":
        if parts.netloc:
            raise ConfigError(f"{bad} has a host; a file prefix is file:///absolute/folder/")
        path = urllib.parse.unquote_to_bytes(parts.path)  # as worker.fetch decodes a URI
        if not path.startswith(b"/") or b"\0" in path:
            raise ConfigError(f"{bad} is not an absolute folder; use file:///absolute/folder/")
        return posixpath.normpath(path)
    if parts.scheme in _DEFAULT_PORTS:
        if "@" in parts.netloc:
            raise ConfigError(f"{bad} holds credentials; put them in {AUTH} instead")
        if not parts.hostname or port == 0:
            raise ConfigError(f"{bad} has no valid host; use {parts.scheme}://host[:port]/path/")
        if _dot_segments(parts.path):
            raise ConfigError(f"{bad} has dot-segments or encoded separators in its path")
        return _Web(
            parts.scheme,
            _host(parts.hostname),
            port or _DEFAULT_PORTS[parts.scheme],
            urllib.parse.unquote(parts.path) or "/",
        )
    raise ConfigError(f"{bad}: use file:///absolute/folder/ or http(s)://host[:port]/path/")


def authorization_value(raw: str, variable: str = AUTH) -> Secret:
    """The Authorization header value for ``basic USER:PASSWORD`` or ``bearer TOKEN``; a
    ConfigError names ``variable`` (the setting it came from) and never shows the value.

    >>> authorization_value("bearer abc").reveal()
    'Bearer abc'
    """
    if not raw:
        return Secret("")
    kind, _, value = raw.strip().partition(" ")
    value = value.strip()
    kind = kind.lower()
    if kind == "bearer" and _TOKEN.match(value):
        return Secret(f"Bearer {value}")
    user, colon, _ = value.partition(":")
    if kind == "basic" and colon and user and value.isprintable():
        return Secret("Basic " + base64.b64encode(value.encode("utf-8")).decode("ascii"))
    raise ConfigError(
        f"{variable} (or {variable}_FILE) must be 'basic USER:PASSWORD' or 'bearer TOKEN' (a TOKEN "
        "of printable ASCII without spaces); the value set is neither (not shown)"
    )


@dataclass(frozen=True)
class ReferencePolicy:
    """The parsed allow-list and the Authorization header value; see the module doc."""

    allow: tuple[str, ...]
    authorization: Secret = field(default_factory=lambda: Secret(""))
    _files: tuple[bytes, ...] = field(default=(), repr=False)
    _webs: tuple[_Web, ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, allow: tuple[str, ...], auth: str) -> ReferencePolicy:
        """Validate the prefixes and the auth value; ConfigError names the variable."""
        parsed = [_parse_prefix(p) for p in allow]
        return cls(
            tuple(allow),
            authorization_value(auth),
            tuple(p for p in parsed if isinstance(p, bytes)),
            tuple(p for p in parsed if isinstance(p, _Web)),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ReferencePolicy:
        return cls.parse(settings.reference_allow, settings.reference_auth.reveal())

    def check_any(self, uri: str) -> None:
        """An empty allow-list refuses every reference, before anything else is looked at."""
        if not self.allow:
            raise _refuse(uri, f"reference events are refused: {ALLOW} is empty")

    def resolve_file(self, uri: str, netloc: str, path: bytes) -> tuple[bytes, bytes]:
        """(the resolved path to open, the resolved prefix it lies under), or a refusal.

        Lexically (no file access) the path must lie under a prefix as written or as resolved;
        then the resolved path must lie under a resolved prefix.
        """
        self.check_any(uri)
        if netloc:
            raise _refuse(uri, "a file URI with a host is refused (use file:///path)")
        outside = _refuse(uri, f"outside the prefixes allowed by {ALLOW}")
        lexical = posixpath.normpath(path)
        resolved_prefixes = [os.path.realpath(p) for p in self._files]
        if not any(_under(lexical, p) for p in (*self._files, *resolved_prefixes)):
            raise outside
        resolved = os.path.realpath(path)
        for prefix in resolved_prefixes:
            if _under(resolved, prefix):
                return resolved, prefix
        raise outside

    def check_opened(self, uri: str, fd: int, prefix: bytes, resolved: bytes) -> None:
        """What ``fd`` is must still lie under ``prefix`` (a link swapped in after the check)."""
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}".encode())
        except OSError:  # no procfs: the resolved path must still name the same, link-free file
            info, now = os.fstat(fd), os.stat(resolved)
            same = (info.st_dev, info.st_ino) == (now.st_dev, now.st_ino)
            opened = resolved if same and os.path.realpath(resolved) == resolved else b""
        if not _under(opened, prefix):
            raise _refuse(uri, f"outside the prefixes allowed by {ALLOW}")

    def check_web(self, url: str, redirected_from: str | None = None) -> None:
        """Refuse an http(s) URL outside the prefixes. For a redirect hop, ``redirected_from``
        is the event's URI: the detail quotes that one, never the Location."""
        self.check_any(redirected_from or url)
        if redirected_from is not None:
            try:
                self.check_web(url)
            except (Rejection, ValueError) as exc:
                why = f"a redirect left the prefixes allowed by {ALLOW} (not followed)"
                raise _refuse(redirected_from, why) from exc
            return
        parts = urllib.parse.urlsplit(url)  # fetch has parsed it already: no ValueError here
        if "@" in parts.netloc:
            raise _refuse(url, f"credentials in the URI are refused (set {AUTH})")
        if _dot_segments(parts.path):
            raise _refuse(url, "dot-segments or encoded separators in the path are refused")
        scheme, host = parts.scheme.lower(), _host(parts.hostname or "")
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        path = urllib.parse.unquote(parts.path) or "/"
        for web in self._webs:
            if (web.scheme, web.host, web.port) == (scheme, host, port) and _under(path, web.path):
                return
        raise _refuse(url, f"outside the prefixes allowed by {ALLOW}")

    def follow(self, uri: str, url: str, location: str) -> str:
        """The next hop of a redirect from ``url``, checked; refusals quote ``uri`` only."""
        try:
            target = urllib.parse.urljoin(url, location)
        except ValueError as exc:
            why = f"a redirect left the prefixes allowed by {ALLOW} (not followed)"
            raise _refuse(uri, why) from exc
        self.check_web(target, redirected_from=uri)
        return target

    def headers(self) -> dict[str, str]:
        """Headers for a request to an allowed http(s) prefix (checked by the caller)."""
        return {"Authorization": self.authorization.reveal()} if self.authorization else {}
