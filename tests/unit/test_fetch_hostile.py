"""Hostile input for the reader: endless files, FIFOs, drip servers, redirect loops, junk URIs.

Every server here listens on 127.0.0.1 only, runs bounded loops and stops on its own once the
client goes away; no test resolves a real name (getaddrinfo is faked wherever a name is used).
These tests are about reading what is allowed: ``fetch`` here allows every local file and the
URI's own origin (the policy itself: tests/unit/test_references.py).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import unittest.mock
import urllib.parse
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback_http import serving

from worker import fetch as fetch_module
from worker.errors import ConfigError, Rejection, TransientError
from worker.fetch import fetch as fetch_under
from worker.references import ReferencePolicy

BODY = b"DICM-ish bytes" * 100
REAL_GETADDRINFO = socket.getaddrinfo


def fetch(uri: str, max_bytes: int, timeout_s: float, sha256: str | None = None) -> bytes:
    """The reader, allowing every local file and the origin of ``uri`` (when it has one)."""
    prefixes = ["file:///"]
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme in ("http", "https") and "@" not in parts.netloc:
            ReferencePolicy.parse((f"{parts.scheme}://{parts.netloc}/",), "")  # a valid prefix?
            prefixes.append(f"{parts.scheme}://{parts.netloc}/")
    except (ValueError, ConfigError):
        pass
    policy = ReferencePolicy.parse(tuple(prefixes), "")
    return fetch_under(uri, max_bytes, timeout_s, sha256, policy=policy)


class Hostile(http.server.BaseHTTPRequestHandler):
    """Each path is one kind of server misbehaviour; every loop is bounded."""

    timeout = 5  # a client that goes quiet frees the thread (server_close joins them)

    def do_GET(self) -> None:
        # The client cutting us off (broken pipe, reset) is what the tests want.
        with contextlib.suppress(OSError):
            self.route()

    def route(self) -> None:
        path = self.path
        if path == "/ok":
            self.answer(200, BODY)
        elif path == "/busy":
            self.answer(429, b"slow down")
        elif path.startswith("/redirect/"):  # /redirect/N: N more hops, then /ok
            hops = int(path.rsplit("/", 1)[1])
            self.moved(302, f"/redirect/{hops - 1}" if hops > 1 else "/ok")
        elif path.startswith("/code/"):  # each redirect code, with a relative Location
            self.moved(int(path.rsplit("/", 1)[1]), "../ok")
        elif path == "/loop":
            self.moved(301, "/loop")
        elif path == "/to-file":
            self.moved(302, "file:///etc/passwd")
        elif path == "/no-location":
            self.answer(302, b"")
        elif path == "/huge-length":
            self.raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000000000\r\n\r\nabc")
        elif path == "/short":
            self.raw(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
        elif path == "/endless":  # no Content-Length: the body ends when the connection does
            self.raw(b"HTTP/1.0 200 OK\r\n\r\n")
            for _ in range(2048):  # at most 128 MiB, stopped by the client long before
                self.wfile.write(b"\0" * 65536)
        elif path == "/endless-chunked":
            self.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(2048):
                self.wfile.write(b"10000\r\n" + b"\0" * 65536 + b"\r\n")
        elif path == "/many-headers":
            self.raw(b"HTTP/1.0 200 OK\r\n" + b"X-Junk: 1\r\n" * 500 + b"\r\nbody")
        elif path == "/drip-body":
            self.raw(b"HTTP/1.0 200 OK\r\nContent-Length: 40\r\n\r\n")
            self.drip(b"x" * 40)
        elif path == "/drip-head":
            self.drip(b"HTTP/1.0 200 OK\r\nX-Slow: " + b"y" * 40)
        else:
            self.answer(404, b"no")

    def answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def moved(self, code: int, location: str) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def raw(self, data: bytes) -> None:
        self.wfile.write(data)

    def drip(self, data: bytes) -> None:
        for byte in data:  # one byte every 0.5 s, 20 s at most
            self.wfile.write(bytes([byte]))
            time.sleep(0.5)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(Hostile) as url:
        yield url


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The hostile server behind TLS, with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class Hangup(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass  # closes at once: a TLS handshake ends in EOF


@pytest.fixture(scope="module")
def hangup_port() -> Iterator[int]:
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hangup)
    tcp.daemon_threads = True
    thread = threading.Thread(target=tcp.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(tcp.server_address[1])
    finally:
        tcp.shutdown()
        tcp.server_close()
        thread.join()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe is: refused


def reason_of(call: Callable[[], object]) -> tuple[type[Exception], str, str]:
    try:
        call()
    except (Rejection, TransientError) as exc:
        return type(exc), exc.reason, exc.detail
    raise AssertionError("no error")


def timed(call: Callable[[], object]) -> tuple[tuple[type[Exception], str, str], float]:
    t0 = time.monotonic()
    result = reason_of(call)
    return result, time.monotonic() - t0


# --- files -------------------------------------------------------------------------------------


def test_character_device_is_refused_at_once() -> None:
    (kind, reason, detail), took = timed(lambda: fetch("file:///dev/zero", 1024, 5))
    assert (kind, reason) == (Rejection, "fetch_error")
    assert "not a regular file" in detail
    assert took < 1


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux procfs")
def test_a_size_of_zero_is_not_trusted() -> None:
    # procfs files are regular with st_size 0 yet have content: only the streaming bound stops it.
    assert os.stat("/proc/self/maps").st_size == 0
    assert reason_of(lambda: fetch("file:///proc/self/maps", 16, 5))[:2] == (Rejection, "too_large")


def test_the_streaming_bound_stops_an_endless_reader() -> None:
    reads: list[int] = []

    def endless(n: int) -> bytes:
        reads.append(n)
        return b"\0" * n

    too_large = Rejection("too_large", "endless")
    with pytest.raises(Rejection, match="too_large"):
        fetch_module._drain(endless, 200_000, too_large, lambda: None)
    assert sum(reads) == 200_001  # never a byte more than limit + 1
    pieces = iter([b"ab", b"c", b""])
    assert fetch_module._drain(lambda n: next(pieces), 3, too_large, lambda: None) == b"abc"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(reason_of(lambda: fetch(fifo.as_uri(), 10, 1)))
    )
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock it before failing: a writer lets the open return
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("fetch blocked on a FIFO")
    assert outcome[0] == (Rejection, "fetch_error", f"{str(fifo)!r} is not a regular file")


def test_directory_and_socket_are_refused(tmp_path: Path) -> None:
    assert reason_of(lambda: fetch(tmp_path.as_uri(), 10, 1))[:2] == (Rejection, "fetch_error")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "s"))
        kind, reason, detail = reason_of(lambda: fetch((tmp_path / "s").as_uri(), 10, 1))
    assert (kind, reason) == (Rejection, "fetch_error") and "not a regular file" in detail


def test_sparse_2_gib_file_is_too_large_quickly(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.dcm"
    with sparse.open("wb") as f:
        f.truncate(2 << 30)
    (kind, reason, _), took = timed(lambda: fetch(sparse.as_uri(), 1 << 20, 5))
    assert (kind, reason) == (Rejection, "too_large")
    assert took < 1


def test_symlinks_to_regular_files_are_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.dcm"
    target.write_bytes(BODY)
    (tmp_path / "link.dcm").symlink_to(target)
    assert fetch((tmp_path / "link.dcm").as_uri(), 10_000, 1) == BODY
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert reason_of(lambda: fetch((tmp_path / "zero").as_uri(), 10, 1))[:2] == (
        Rejection,
        "fetch_error",
    )
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert "not found" in reason_of(lambda: fetch((tmp_path / "dangling").as_uri(), 10, 1))[2]


def test_file_at_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 1000)
    assert fetch(path.as_uri(), 1000, 1) == b"x" * 1000
    assert reason_of(lambda: fetch(path.as_uri(), 999, 1))[1] == "too_large"
    for host in ("localhost", "remote.example"):  # a file URI with a host: refused, unread
        kind, reason, detail = reason_of(partial(fetch, f"file://{host}{path}", 1000, 1))
        assert (kind, reason) == (Rejection, "reference_refused") and "host" in detail


@pytest.mark.parametrize(
    "uri",
    [
        "file:",
        "file://",
        "file:relative/path",
        "file:///tmp/a%00b",
        "file:///tmp/a\x00b",
        "file:///" + "a" * 5000,
        "file:///tmp/\ud800",
    ],
)
def test_malformed_file_uris_are_rejected(uri: str) -> None:
    assert reason_of(lambda: fetch(uri, 10, 1))[:2] == (Rejection, "fetch_error")


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip-body", "/drip-head"])
def test_drip_is_cut_at_the_deadline(server: str, path: str) -> None:
    (kind, reason, detail), took = timed(lambda: fetch(server + path, 10_000, 1.0))
    assert (kind, reason) == (TransientError, "fetch_error")
    assert "deadline" in detail
    assert took < 1.0 + 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_silent_server_is_cut_at_the_deadline(silent_port: int, scheme: str) -> None:
    uri = f"{scheme}://127.0.0.1:{silent_port}/x"
    (kind, _, detail), took = timed(lambda: fetch(uri, 10_000, 0.5))
    assert kind is TransientError and "deadline" in detail
    assert took < 0.5 + 1


@pytest.mark.parametrize("path", ["/endless", "/endless-chunked"])
def test_endless_body_is_too_large(server: str, path: str) -> None:
    (kind, reason, _), took = timed(lambda: fetch(server + path, 1 << 20, 5))
    assert (kind, reason) == (Rejection, "too_large")
    assert took < 2


def test_content_length_over_the_limit_is_refused_early(server: str) -> None:
    (kind, reason, _), took = timed(lambda: fetch(server + "/huge-length", 1 << 20, 5))
    assert (kind, reason) == (Rejection, "too_large")
    assert took < 1


def test_a_body_shorter_than_its_content_length_is_transient(server: str) -> None:
    kind, _, detail = reason_of(lambda: fetch(server + "/short", 10_000, 5))
    assert kind is TransientError and "body cut" in detail


def test_header_bomb_is_rejected(server: str) -> None:
    assert reason_of(lambda: fetch(server + "/many-headers", 10_000, 5))[:2] == (
        Rejection,
        "fetch_error",
    )


def test_429_is_transient(server: str) -> None:
    assert reason_of(lambda: fetch(server + "/busy", 10_000, 5))[0] is TransientError


def test_redirects_are_followed_within_five_hops(server: str) -> None:
    assert fetch(server + "/redirect/5", 10_000, 5) == BODY
    for code in (301, 302, 303, 307, 308):
        assert fetch(f"{server}/code/{code}", 10_000, 5) == BODY  # Location: ../ok


@pytest.mark.parametrize(
    ("path", "reason", "words"),
    [
        ("/redirect/6", "fetch_error", "too many redirects"),
        ("/loop", "fetch_error", "too many redirects"),
        ("/to-file", "reference_refused", "redirect left the prefixes"),  # file:// allowed too
        ("/no-location", "fetch_error", "without Location"),
    ],
)
def test_bad_redirects_are_rejected(server: str, path: str, reason: str, words: str) -> None:
    kind, got, detail = reason_of(lambda: fetch(server + path, 10_000, 5))
    assert (kind, got) == (Rejection, reason)
    assert words in detail and "passwd" not in detail  # never the Location


def test_tls_handshake_cut_short_is_transient(hangup_port: int) -> None:
    kind, reason, _ = reason_of(lambda: fetch(f"https://127.0.0.1:{hangup_port}/x", 10, 5))
    assert kind is TransientError and reason == "fetch_error"


def test_untrusted_certificate_is_rejected(tls_server: tuple[str, Path]) -> None:
    base, _ = tls_server
    kind, reason, detail = reason_of(lambda: fetch(base + "/ok", 10_000, 5))
    assert (kind, reason) == (Rejection, "fetch_error") and "SSLCertVerificationError" in detail


def test_https_is_bounded_like_http(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, cert = tls_server
    trusting = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(fetch_module, "_tls", lambda: trusting)
    assert fetch(base + "/redirect/2", 10_000, 5) == BODY
    assert reason_of(lambda: fetch(base + "/endless", 1 << 20, 5))[1] == "too_large"
    for path in ("/drip-head", "/drip-body"):  # the watchdog cuts a TLS socket too
        (kind, _, detail), took = timed(partial(fetch, base + path, 10_000, 1.0))
        assert kind is TransientError and "deadline" in detail and took < 2


def fake_resolver(action: Callable[[], Any]) -> Callable[..., Any]:
    """getaddrinfo that plays a DNS server for names and passes address literals through."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)  # never a lookup
        if host != "scan-archive.test":
            raise AssertionError(f"unexpected lookup of {host!r}")
        return action() or REAL_GETADDRINFO("127.0.0.1", port, *args, **kwargs)

    return getaddrinfo


def test_names_are_resolved_within_the_deadline(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    named = f"http://scan-archive.test:{port}/ok"
    with unittest.mock.patch("socket.getaddrinfo", fake_resolver(lambda: None)):
        assert fetch(named, 10_000, 5) == BODY

    def hang() -> None:
        time.sleep(2)  # a stuck resolver: the lookup thread is left behind, the fetch is not

    with unittest.mock.patch("socket.getaddrinfo", fake_resolver(hang)):
        (kind, _, detail), took = timed(lambda: fetch(named, 10_000, 0.5))
    assert kind is TransientError and "deadline" in detail and took < 1.5

    def fail() -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with unittest.mock.patch("socket.getaddrinfo", fake_resolver(fail)):
        assert reason_of(lambda: fetch(named, 10_000, 5))[0] is TransientError


def test_refused_and_no_time_left_are_transient() -> None:
    uri = f"http://127.0.0.1:{closed_port()}/x"
    assert reason_of(lambda: fetch(uri, 10, 1))[0] is TransientError
    for timeout in (0.0, -1.0, float("nan")):
        assert reason_of(partial(fetch, uri, 10, timeout))[0] is TransientError


@pytest.mark.parametrize(
    "uri",
    [
        "http://[::1/x",
        "http://exa mple.com/x",
        "http://",
        "http:///path-only",
        "http://host:99999/x",
        "http://host:-1/x",
        "http://host:0/x",
        "http://host:port/x",
        "http://xn--/",
        "http://xn--zz.example/",
        "http://a..b/",
        "http://" + "a" * 70 + ".example/",
        "https://exa\x00mple.com/",
        "http://ex\u00a0ample/",
        "http://\ud800/",
        "ftp://example.com/x",
        "",
        "\x00",
    ],
)
def test_malformed_uris_are_rejected_without_a_lookup(uri: str) -> None:
    refuse = unittest.mock.Mock(side_effect=AssertionError("no lookup for a malformed URI"))
    with unittest.mock.patch("socket.getaddrinfo", refuse):
        assert reason_of(lambda: fetch(uri, 10, 1))[:2] == (Rejection, "fetch_error")


def test_request_target_is_percent_encoded(server: str) -> None:
    # Non-ASCII, spaces and control bytes never reach http.client raw (it would raise).
    for path in ("/ok?x=\u00e9", "/o k", "/ok\x7f", "/\u00e9\n"):
        kind, _, detail = reason_of(partial(fetch, server + path, 10_000, 5))
        assert kind is Rejection and "HTTP 404" in detail  # the request went out


# --- any string -------------------------------------------------------------------------------

URI_CHARS = st.sampled_from(
    list("abcxyz019-._~:/?#[]@!$&'()*+,;=% \t\n\x00\x7f\u00e9\u3000\U0001f600")
)
HOSTS = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "xn--", "exa mple.com", "8.8.8.8", "1", "[", "", "%41"]
)


PLAYGROUND = "@PLAYGROUND@"  # replaced by the test's directory of one file of each kind
_JUNK = st.text(URI_CHARS, max_size=40)
URIS = st.one_of(
    st.builds(
        str.__add__,
        st.sampled_from(["http://", "https://", "HTTP://", "http:", "file://", "file:", ""]),
        _JUNK,
    ),
    st.builds(
        lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
        st.sampled_from(["http://", "https://"]),
        st.one_of(HOSTS, _JUNK),
        st.one_of(st.just(""), st.builds(":{}".format, st.one_of(st.integers(-5, 70000), _JUNK))),
        _JUNK,
    ),
    st.builds(f"file://{PLAYGROUND}/{{}}".format, st.one_of(st.sampled_from("fdlp"), _JUNK)),
)


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("playground")
    (root / "f").write_bytes(b"x" * 100)
    (root / "d").mkdir()
    (root / "l").symlink_to(root / "f")
    os.mkfifo(root / "p")
    return str(root)


def only_rejection_or_transient(uri: str, server: str, hangup_port: int) -> None:
    try:  # every host, any port, is one of the loopback servers: TLS goes to the hang-up one
        https = urllib.parse.urlsplit(uri).scheme == "https"
    except ValueError:
        https = False
    port = hangup_port if https else int(server.rsplit(":", 1)[1])

    def loopback_only(host: object, _port: object, *args: Any, **kwargs: Any) -> Any:
        return REAL_GETADDRINFO("127.0.0.1", port, *args, **kwargs)

    with unittest.mock.patch("socket.getaddrinfo", loopback_only):
        try:
            result = fetch(uri, 1 << 16, 2.0)
        except (Rejection, TransientError) as exc:
            assert exc.reason in ("fetch_error", "too_large", "reference_refused"), exc
        else:
            assert isinstance(result, bytes)


FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FAST
@given(uri=st.text())
def test_any_text_raises_only_rejection_or_transient(
    server: str, hangup_port: int, uri: str
) -> None:
    only_rejection_or_transient(uri, server, hangup_port)


@FAST
@given(uri=URIS)
def test_any_uri_ish_string_raises_only_rejection_or_transient(
    server: str, hangup_port: int, playground: str, uri: str
) -> None:
    only_rejection_or_transient(uri.replace(PLAYGROUND, playground), server, hangup_port)
