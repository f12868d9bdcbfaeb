"""multipart/related bodies (worker.dicomweb): round trips, what Orthanc sends, hostile bodies,
and the fetcher unwrapping a WADO-RS reply from a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback_http import serving

from worker.dicomweb import (
    ACCEPT,
    MultipartError,
    build_multipart_related,
    instance_from_reply,
    parse_multipart_related,
)
from worker.errors import Rejection, ScanStreamError
from worker.fetch import fetch
from worker.references import ReferencePolicy

RELATED = 'multipart/related; type="application/dicom"; boundary=b'
DICOM = b"\0" * 128 + b"DICM" + bytes(range(256)) * 4


def parse(body: bytes, content_type: str = RELATED, **kw: int) -> list[tuple[str, bytes]]:
    return parse_multipart_related(content_type, body, **kw)


# --- round trips and well-formed variants --------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_build_then_parse_gives_the_parts_back(parts: list[bytes]) -> None:
    ctype, body = build_multipart_related(parts)
    assert parse_multipart_related(ctype, body) == [("application/dicom", p) for p in parts]


@pytest.mark.parametrize(
    "part",
    [
        b"",
        b"\r\n",
        b"\n",
        b"\r",
        b"ends with CR\r",
        b"\r\n\r\nstarts with blank lines",
        b"--b\r\nlooks like a delimiter of another boundary",
        b"Content-Type: text/html\r\n\r\nlooks like headers",
        b"\xff\xfe\x00 not text \x80",
        DICOM,
    ],
)
def test_round_trip_is_byte_exact(part: bytes) -> None:
    ctype, body = build_multipart_related([part, part], content_type="application/octet-stream")
    assert parse_multipart_related(ctype, body) == [("application/octet-stream", part)] * 2


def test_orthanc_shaped_reply() -> None:
    # As measured from Orthanc 1.10 + DICOMweb 1.7: a 70-character boundary, quoted type, part
    # headers Content-Type, Content-Length and MIME-Version, CRLF, final CRLF.
    boundary = "e712bfca-427c-4de4-af39-a9e17d05d847-0b74d2d2-8e5b-4fb2-91ff-2f18749a2"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(DICOM)}\r\n"
            f"MIME-Version: 1.0\r\n\r\n"
        ).encode()
        + DICOM
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert parse_multipart_related(ctype, body) == [("application/dicom", DICOM)]


def test_boundary_quoting_case_preamble_epilogue_and_bare_lf() -> None:
    body = b"ignored preamble\r\n--a b'c\r\n\r\nX\r\n--a b'c--\r\nignored epilogue"
    ctype = 'MULTIPART/Related; Boundary="a b\'c"; TYPE="application/dicom"'
    assert parse(body, ctype) == [("application/dicom", b"X")]
    lf = b"--b\nContent-Type: application/dicom\n\nX\n--b\nContent-Type: image/jpeg\n\nY\n--b--"
    assert parse(lf) == [("application/dicom", b"X"), ("image/jpeg", b"Y")]


def test_part_content_types() -> None:
    body = (
        b"--b\r\n\r\nno headers\r\n"
        b"--b\r\nContent-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
        b"\r\nwith parameters\r\n--b--\r\n"
    )
    # A part without Content-Type takes the body's type parameter (RFC 2387), quoted or not.
    assert parse(body) == [
        ("application/dicom", b"no headers"),
        ("application/dicom", b"with parameters"),
    ]
    assert parse(body, "multipart/related; type=application/dicom; boundary=b")[0][0] == (
        "application/dicom"
    )
    assert parse(body, "multipart/related; boundary=b")[0][0] == "application/octet-stream"


def test_max_parts_is_inclusive() -> None:
    ctype, body = build_multipart_related([b"x"] * 5)
    assert len(parse_multipart_related(ctype, body, max_parts=5)) == 5
    with pytest.raises(MultipartError, match="more than 4 parts"):
        parse_multipart_related(ctype, body, max_parts=4)


# --- hostile bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "match"),
    [
        ("multipart/related", b"--b\r\n\r\nX\r\n--b--\r\n", "names no boundary"),
        ('multipart/related; boundary=""', b"--\r\n\r\nX\r\n----\r\n", "names no boundary"),
        ("multipart/mixed; boundary=b", b"--b\r\n\r\nX\r\n--b--\r\n", "multipart/mixed body"),
        ("application/dicom", DICOM, "application/dicom body"),
        ("", b"", "text/plain body"),
        (RELATED, b"", "no part delimited by '--b'"),
        (RELATED, b"X\r\n--c\r\n\r\nY\r\n--c--\r\n", "no part delimited by '--b'"),
        (RELATED, b"--b--\r\n", "no part"),
        (RELATED, b"--b\r\nContent-Type: application/dicom\r\n\r\n" + DICOM, "unterminated"),
        (RELATED, b"--b\r\n\r\nX\r\n--b\r\n\r\nY", "unterminated"),
        (RELATED, b"--b\r\nDICM-without-headers-or-blank-line\r\n--b--", "no blank line"),
        (RELATED, b"--b\r\nContent-Type: dicom\r\n\r\nX\r\n--b--", "invalid Content-Type"),
        (
            RELATED,
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\nRElDTQ==\r\n--b--",
            "Content-Transfer-Encoding 'base64'",
        ),
        (RELATED, b"--b\r\nContent-Length: 5\r\n\r\nX\r\n--b--", "1 bytes, its Content-Length"),
        (RELATED, b"--b\r\nContent-Length: x\r\n\r\nX\r\n--b--", "Content-Length says x"),
        (
            RELATED,
            b"--b\r\nContent-Type: multipart/related; boundary=c\r\n\r\n--c\r\n\r\nX\r\n--c--\r\n"
            b"\r\n--b--\r\n",
            "nesting is refused",
        ),
        (
            RELATED,
            b"--b\r\ncontent-type:\r\n message/rfc822\r\n\r\nSubject: x\r\n\r\nX\r\n--b--\r\n",
            "nesting is refused",
        ),
        (RELATED + "\r\nX-Injected: 1", b"--b\r\n\r\nX\r\n--b--", "not printable ASCII"),
        ("multipart/related; boundary=bé", b"--b\r\n\r\nX\r\n--b--", "not printable ASCII"),
    ],
)
def test_malformed_bodies_are_refused(content_type: str, body: bytes, match: str) -> None:
    with pytest.raises(MultipartError, match=match):
        parse_multipart_related(content_type, body)


def test_multipart_error_is_a_value_error_of_the_project() -> None:
    assert issubclass(MultipartError, ValueError)
    assert issubclass(MultipartError, ScanStreamError)


def test_a_flood_of_parts_is_refused_before_parsing() -> None:
    body = b"--b\r\n\r\n\r\n" * 1_000_000 + b"--b--\r\n"  # 9 MB, a million empty parts
    started = time.perf_counter()
    with pytest.raises(MultipartError, match="more than 1000 parts"):
        parse(body)
    assert time.perf_counter() - started < 1.0


def test_deep_nesting_is_refused_before_parsing() -> None:
    depth = 20_000  # far beyond the recursion limit, were the parser to descend
    opening = b"".join(
        b"--b%d\r\nContent-Type: multipart/related; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth + 1)))
    body = opening + b"--b%d\r\n\r\nX" % depth + closing
    started = time.perf_counter()
    with pytest.raises(MultipartError, match="nesting is refused"):
        parse_multipart_related("multipart/related; boundary=b0", body)
    assert time.perf_counter() - started < 1.0


# --- building -------------------------------------------------------------------------------


def test_build_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        build_multipart_related([])
    with pytest.raises(ValueError, match="not a media type"):
        build_multipart_related([b"x"], content_type='application/dicom"; boundary=evil')


def test_build_picks_a_boundary_that_is_in_no_part(monkeypatch: pytest.MonkeyPatch) -> None:
    taken, fresh = uuid.UUID(int=1), uuid.UUID(int=2)
    values = iter([taken, fresh])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(values))  # as worker.dicomweb calls it
    ctype, body = build_multipart_related([b"x" + taken.hex.encode() + b"y"])
    assert ctype.endswith(f"boundary={fresh.hex}")
    assert parse_multipart_related(ctype, body) == [
        ("application/dicom", b"x" + taken.hex.encode() + b"y")
    ]


# --- a WADO-RS instance reply ---------------------------------------------------------------


def test_instance_reply_holds_exactly_one_dicom_part() -> None:
    assert instance_from_reply(None, DICOM, "'u'") == DICOM
    assert instance_from_reply("application/dicom", DICOM, "'u'") == DICOM
    assert instance_from_reply(*build_multipart_related([DICOM]), "'u'") == DICOM
    cases = [
        (build_multipart_related([DICOM, DICOM]), "2 parts, 2 of them"),
        (build_multipart_related([b"{}"], "application/json"), "1 part, 0 of them"),
        (("Multipart/Related; boundary=b", b"--b\r\n\r\nX"), "malformed multipart reply"),
        (("multipart/mixed; boundary=b", b"--b\r\n\r\nX\r\n--b--"), "not multipart/related"),
    ]
    for (ctype, body), match in cases:
        with pytest.raises(Rejection, match=match) as info:
            instance_from_reply(ctype, body, "'u'")
        assert info.value.reason == "fetch_error"


class WadoHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.headers.get("Accept") != ACCEPT:
            self.send_error(400, "unexpected Accept")
            return
        parts = {"/one": [DICOM], "/two": [DICOM, DICOM]}.get(self.path, [DICOM])
        ctype, body = build_multipart_related(parts)
        if self.path == "/cut":
            ctype, body = RELATED, b"--b\r\n\r\n" + DICOM
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def wado() -> Iterator[str]:
    with serving(WadoHandler) as url:
        yield url


def test_fetch_unwraps_a_wado_rs_reply(wado: str) -> None:
    here = ReferencePolicy.parse((wado + "/",), "")
    digest = hashlib.sha256(DICOM).hexdigest()  # of the file, not of the multipart body
    assert fetch(f"{wado}/one", 10_000, 5, sha256=digest, policy=here) == DICOM
    with pytest.raises(Rejection, match="exactly one application/dicom part") as info:
        fetch(f"{wado}/two", 10_000, 5, policy=here)
    assert info.value.reason == "fetch_error"
    with pytest.raises(Rejection, match="unterminated") as info:
        fetch(f"{wado}/cut", 10_000, 5, policy=here)
    assert info.value.reason == "fetch_error"
    # max_bytes bounds the whole body as it streams, multipart framing included.
    with pytest.raises(Rejection, match="too_large"):
        fetch(f"{wado}/one", len(DICOM) + 10, 5, policy=here)
