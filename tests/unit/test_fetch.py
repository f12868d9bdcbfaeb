"""The reader: file:// and http(s):// (a real local HTTP server), final vs transient failures.

Each test allows exactly its own server or folder; the policy itself is tested in
tests/unit/test_references.py.
"""

from __future__ import annotations

import hashlib
import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_http import serving

from worker.errors import Rejection, TransientError
from worker.fetch import fetch
from worker.references import ReferencePolicy

BODY = b"DICM-ish bytes" * 100


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/accept": 200, "/missing": 404, "/busy": 503}.get(self.path, 404)
        body = BODY if code == 200 else b"no"
        if self.path == "/accept":  # echoes what the reader asked for
            body = self.headers.get("Accept", "").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    with serving(Handler) as url:
        yield url


def allowing(*prefixes: str) -> ReferencePolicy:
    return ReferencePolicy.parse(prefixes, "")


def test_http_fetch_and_its_failures(server: str) -> None:
    here = allowing(server + "/")
    assert fetch(f"{server}/ok", max_bytes=10_000, timeout_s=5, policy=here) == BODY
    digest = hashlib.sha256(BODY).hexdigest()
    assert fetch(f"{server}/ok", 10_000, 5, sha256=digest, policy=here) == BODY
    with pytest.raises(Rejection, match="sha256"):
        fetch(f"{server}/ok", 10_000, 5, sha256="0" * 64, policy=here)
    with pytest.raises(Rejection, match="too_large"):
        fetch(f"{server}/ok", max_bytes=10, timeout_s=5, policy=here)
    with pytest.raises(Rejection, match="HTTP 404"):
        fetch(f"{server}/missing", 10_000, 5, policy=here)
    with pytest.raises(TransientError, match="HTTP 503"):
        fetch(f"{server}/busy", 10_000, 5, policy=here)


def test_http_asks_for_the_part_10_object(server: str) -> None:
    # WADO-RS: the instance as stored (no transcoding), in a multipart/related reply; Orthanc
    # answers 400 to a second media range. A bare reply (this one) is taken as the file.
    accept = fetch(f"{server}/accept", 10_000, 5, policy=allowing(server))
    assert accept == b'multipart/related; type="application/dicom"; transfer-syntax=*'


def test_file_fetch_and_schemes(tmp_path: Path) -> None:
    here = allowing(tmp_path.as_uri(), "http://127.0.0.1:9/")
    path = tmp_path / "a.dcm"
    path.write_bytes(BODY)
    assert fetch(path.as_uri(), 10_000, 1, policy=here) == BODY
    with pytest.raises(Rejection) as info:
        fetch((tmp_path / "gone.dcm").as_uri(), 10_000, 1, policy=here)
    assert info.value.reason == "fetch_error"
    with pytest.raises(Rejection, match="scheme"):
        fetch("s3://bucket/key", 10_000, 1, policy=here)
    refused = "http://127.0.0.1:9/x"  # discard port: nothing listens, connection refused
    with pytest.raises(TransientError):
        fetch(refused, 10_000, 1, policy=here)
