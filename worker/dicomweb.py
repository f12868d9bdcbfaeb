"""DICOMweb ``multipart/related`` bodies (PS3.18 8.6.1.2) as pure functions: parse and build.

A WADO-RS server answers an instance request with a ``multipart/related`` body holding the
DICOM Part 10 file as one ``application/dicom`` part; a STOW-RS request carries one part per
instance. :func:`parse_multipart_related` reads such a body with the standard library's
:mod:`email` parser (no hand-written one) and adds the checks an HTTP peer needs:

* the Content-Type must be ``multipart/related`` with a non-empty ``boundary`` (quoted or not,
  any case); a preamble before the first delimiter and an epilogue after the last are ignored;
  line ends may be CRLF (as RFC 2046 says) or bare LF;
* at least one part, the closing ``--boundary--`` present (a body cut short is not accepted),
  at most ``max_parts`` parts (counted before parsing, so a flood of tiny parts costs nothing);
* no part that is itself multipart or a message (``multipart/*``, ``message/*``): nesting is
  refused before parsing, so it cannot make the parser recurse;
* each part has a blank line after its (possibly empty) headers, a valid Content-Type if any,
  no Content-Transfer-Encoding other than binary/7bit/8bit (HTTP does not use one), and, where it
  declares a Content-Length (Orthanc does), exactly that many bytes;
* a part without Content-Type gets the ``type`` parameter of the body (RFC 2387: the type of
  its parts' root), else ``application/octet-stream``.

Every failure is a :class:`MultipartError`: a ``ValueError`` (and a ``ScanStreamError``) whose
message says what is wrong; the caller decides what it means (:func:`instance_from_reply`, used
by :mod:`worker.fetch`, turns it into a ``fetch_error``; a STOW-RS receiver into HTTP 400).

>>> ctype, body = build_multipart_related([b"DICM-1", b"DICM-2"])
>>> parse_multipart_related(ctype, body)
[('application/dicom', b'DICM-1'), ('application/dicom', b'DICM-2')]
>>> parse_multipart_related("multipart/related; boundary=b", b"--b\\r\\n\\r\\ncut sh")
Traceback (most recent call last):
    ...
worker.dicomweb.MultipartError: unterminated body: no closing '--b--' delimiter
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re
import uuid

from worker.errors import Rejection, ScanStreamError

# What worker.fetch asks a WADO-RS server for: the instance as stored, not transcoded. Measured
# on Orthanc 1.10 with its DICOMweb plugin 1.7: without ``transfer-syntax=*`` it transcodes to
# Explicit VR Little Endian (HTTP 500 where it cannot, e.g. JPEG 2000), and it answers 400 to any
# Accept listing a second media range (``..., application/dicom; q=0.5`` too). A server that
# answers a bare application/dicom body instead is still accepted (instance_from_reply).
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MAX_PARTS = 1000
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+\Z")
_NESTED = re.compile(rb"(?i)content-type[ \t]*:\s*(?:multipart|message)/")
_PLAIN_ENCODINGS = frozenset({"binary", "7bit", "8bit"})


class MultipartError(ScanStreamError, ValueError):
    """A body that is not a well-formed ``multipart/related`` body; the message says why."""


def parse_multipart_related(
    content_type: str, body: bytes, max_parts: int = MAX_PARTS
) -> list[tuple[str, bytes]]:
    """The parts of a ``multipart/related`` body: (media type, lower case without parameters;
    the part's bytes), in order. ``content_type`` is the body's Content-Type header value.

    Raises :class:`MultipartError` for anything malformed (see the module doc).

    >>> ctype = 'Multipart/Related; type="application/dicom"; boundary="x y"'
    >>> parse_multipart_related(ctype, b"preamble\\r\\n--x y\\r\\n\\r\\nDICM\\r\\n--x y--\\r\\n")
    [('application/dicom', b'DICM')]
    >>> parse_multipart_related("multipart/related", b"")
    Traceback (most recent call last):
        ...
    worker.dicomweb.MultipartError: the Content-Type names no boundary
    """
    if not content_type.isascii() or not content_type.isprintable():
        raise MultipartError("the Content-Type is not printable ASCII")
    head = email.message.Message()
    head["Content-Type"] = content_type
    if head.get_content_type() != "multipart/related":
        raise MultipartError(f"a {head.get_content_type()} body, not multipart/related")
    boundary = head.get_boundary()
    if not boundary:
        raise MultipartError("the Content-Type names no boundary")
    delimiter = b"--" + boundary.encode("ascii")
    if body.count(delimiter) > max_parts + 1:  # over-counts at worst: a cheap bound
        raise MultipartError(f"more than {max_parts} parts")
    if _NESTED.search(body):
        raise MultipartError("a part is itself multipart or a message: nesting is refused")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list) or not parts:
        raise MultipartError(f"no part delimited by {delimiter.decode()!r}")
    defects = [type(d).__name__ for d in message.defects]
    if "CloseBoundaryNotFoundDefect" in defects:
        raise MultipartError(
            f"unterminated body: no closing {delimiter.decode() + '--'!r} delimiter"
        )
    if defects:
        raise MultipartError(f"malformed body ({', '.join(defects)})")
    if len(parts) > max_parts:
        raise MultipartError(f"more than {max_parts} parts")
    default = head.get_param("type")
    default = default if isinstance(default, str) and _MEDIA_TYPE.match(default) else None
    return [_part(n, part, default) for n, part in enumerate(parts, 1)]


def _part(n: int, part: email.message.Message, default: str | None) -> tuple[str, bytes]:
    if part.defects:
        names = ", ".join(type(d).__name__ for d in part.defects)
        if "MissingHeaderBodySeparatorDefect" in names:
            raise MultipartError(f"part {n}: no blank line after its headers")
        raise MultipartError(f"part {n}: malformed ({names})")
    if part.is_multipart():  # the pre-check above should have caught it
        raise MultipartError(f"part {n} is itself multipart or a message: nesting is refused")
    raw = part.get("Content-Type")
    if raw is None:
        media = (default or "application/octet-stream").lower()
    elif _MEDIA_TYPE.match(str(raw).split(";", 1)[0].strip()):
        media = part.get_content_type()
    else:
        raise MultipartError(f"part {n}: invalid Content-Type {str(raw)[:80]!r}")
    encoding = str(part.get("Content-Transfer-Encoding", "binary")).strip().lower()
    if encoding not in _PLAIN_ENCODINGS:
        raise MultipartError(
            f"part {n}: Content-Transfer-Encoding {encoding[:40]!r} (HTTP uses none)"
        )
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):  # not reached for a non-multipart part
        raise MultipartError(f"part {n}: no payload")
    declared = part.get("Content-Length")
    if declared is not None and str(declared).strip() != str(len(data)):
        raise MultipartError(f"part {n}: {len(data)} bytes, its Content-Length says {declared}")
    return media, data


def build_multipart_related(
    parts: list[bytes], content_type: str = "application/dicom"
) -> tuple[str, bytes]:
    """(Content-Type header value, body) of a ``multipart/related`` body of ``parts``, each of
    media type ``content_type`` (a STOW-RS request; a WADO-RS reply in tests). The boundary is
    random and occurs in no part. ``ValueError`` for no parts or an invalid media type.

    >>> ctype, body = build_multipart_related([b"DICM"])
    >>> ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    True
    >>> body.startswith(b"--") and body.endswith(b"--\\r\\n")
    True
    """
    if not parts:
        raise ValueError("a multipart/related body needs at least one part")
    if not _MEDIA_TYPE.match(content_type):
        raise ValueError(f"not a media type without parameters: {content_type[:80]!r}")
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in part for part in parts):  # practically never
        boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return f'multipart/related; type="{content_type}"; boundary={boundary}', body


def instance_from_reply(content_type: str | None, body: bytes, shown: str) -> bytes:
    """The DICOM Part 10 bytes of a WADO-RS instance reply from ``shown`` (a quoted URI).

    A ``multipart/*`` reply must be a well-formed ``multipart/related`` body of exactly one
    ``application/dicom`` part, else ``fetch_error``. Any other reply (``application/dicom``
    from a plain file server or a claim-check store, no Content-Type) is the file itself: the
    DICOM parser judges it.

    >>> instance_from_reply("application/dicom", b"DICM", "'u'")
    b'DICM'
    >>> instance_from_reply(*build_multipart_related([b"DICM"]), "'u'")
    b'DICM'
    >>> instance_from_reply(*build_multipart_related([b"A", b"B"]), "'u'")
    Traceback (most recent call last):
        ...
    worker.errors.Rejection: fetch_error: 'u': a WADO-RS instance reply holds exactly one \
application/dicom part; this one has 2 parts, 2 of them application/dicom
    """
    if content_type is None or not content_type.strip().lower().startswith("multipart/"):
        return body
    try:
        parts = parse_multipart_related(content_type, body)
    except MultipartError as exc:
        raise Rejection("fetch_error", f"{shown}: malformed multipart reply: {exc}") from exc
    dicom = [data for media, data in parts if media == "application/dicom"]
    if len(parts) != 1 or len(dicom) != 1:
        raise Rejection(
            "fetch_error",
            f"{shown}: a WADO-RS instance reply holds exactly one application/dicom part; this "
            f"one has {len(parts)} part{'s' if len(parts) != 1 else ''}, {len(dicom)} of them "
            "application/dicom",
        )
    return dicom[0]
