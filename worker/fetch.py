"""The one reader: turns a reference event's URI into bytes (file://, http://, https://).

All file and network access of the pipeline happens here, so decoding stays a pure function of
bytes. Failures that may pass (timeouts, 5xx, connection refused) raise TransientError so the
runtime can retry with backoff; a missing file or a 4xx is final and raises Rejection.

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile(delete=False) as f:
...     _ = f.write(b"abc")
>>> fetch("file://" + f.name, max_bytes=10, timeout_s=1)
b'abc'
>>> os.unlink(f.name)
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from worker.errors import Rejection, TransientError


def fetch(uri: str, max_bytes: int, timeout_s: float, sha256: str | None = None) -> bytes:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        data = _read_file(Path(urllib.parse.unquote(parsed.path)), max_bytes)
    elif parsed.scheme in ("http", "https"):
        data = _read_http(uri, max_bytes, timeout_s)
    else:
        raise Rejection("fetch_error", f"unsupported URI scheme {parsed.scheme!r}")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise Rejection("fetch_error", f"content of {uri} does not match its sha256")
    return data


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise Rejection("too_large", f"{size} bytes exceeds the limit of {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise Rejection("fetch_error", f"file not found: {path}") from exc
    except OSError as exc:
        raise Rejection("fetch_error", f"cannot read {path}: {exc.strerror}") from exc


def _read_http(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    # WADO-RS answers multipart/related unless asked; ask for the Part 10 object itself.
    request = urllib.request.Request(
        uri, headers={"Accept": "application/dicom, multipart/related; type=application/dicom"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise TransientError("fetch_error", f"HTTP {exc.code} from {uri}") from exc
        raise Rejection("fetch_error", f"HTTP {exc.code} from {uri}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise TransientError("fetch_error", f"{uri}: {exc}") from exc
    if len(data) > max_bytes:
        raise Rejection("too_large", f"{uri} is larger than the limit of {max_bytes} bytes")
    return data
