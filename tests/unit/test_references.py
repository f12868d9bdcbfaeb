"""The reference policy: what the operator allows is read, nothing else is even touched.

Every refusal is checked for its reason, for a detail that says nothing learned about the target
(resolved path, link target, existence, HTTP status, Location), and, over HTTP, for loopback
servers that record every connection and request: a refused URI reaches none of them.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from loopback_http import serving

from worker import fetch as fetch_module
from worker.errors import ConfigError, Rejection, TransientError
from worker.fetch import fetch
from worker.references import ReferencePolicy
from worker.runtime.publisher import reference_allow_line
from worker.settings import Secret, Settings

BODY = b"DICM-ish bytes" * 10


class Recorder:
    """A loopback server's log: every connection and every request (path, headers)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    def handler(self, routes: dict[str, str]) -> type[http.server.BaseHTTPRequestHandler]:
        """200 with BODY for a path, or a 302 to ``routes[path]`` when the path is routed."""
        log = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                with log.lock:
                    log.connections += 1
                super().setup()

            def do_GET(self) -> None:
                with log.lock:
                    log.requests.append((self.path, dict(self.headers.items())))
                location = routes.get(self.path)
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                body = b"" if location else BODY
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def servers() -> Iterator[tuple[str, Recorder, str, Recorder]]:
    """(allowed base URL, its log, other base URL on another port, its log); the allowed one
    redirects /out to the other one and /in to its own /dicom-web/ok."""
    other_log = Recorder()
    with serving(other_log.handler({})) as other:
        log = Recorder()
        routes = {"/dicom-web/out": other + "/dicom-web/x", "/dicom-web/in": "/dicom-web/ok"}
        with serving(log.handler(routes)) as base:
            yield base, log, other, other_log


def policy(*allow: str, auth: str = "") -> ReferencePolicy:
    return ReferencePolicy.parse(allow, auth)


def refusal(call: Callable[[], object]) -> Rejection:
    with pytest.raises(Rejection) as info:
        call()
    return info.value


def assert_refused(
    call: Callable[[], object], *unsaid: str, reason: str = "reference_refused"
) -> str:
    """The call is refused with ``reason``; none of ``unsaid`` is in its detail, str or repr."""
    exc = refusal(call)
    assert exc.reason == reason, exc
    for text in (exc.detail, str(exc), repr(exc)):
        for word in unsaid:
            assert word not in text, (word, text)
    return exc.detail


# --- files -------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/in/{a.dcm, sub/b.dcm} allowed; tmp/secret.dcm and tmp/in2/c.dcm outside."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in2").mkdir()
    for name in ("in/a.dcm", "in/sub/b.dcm", "secret.dcm", "in2/c.dcm"):
        (tmp_path / name).write_bytes(BODY)
    return tmp_path


def read(uri: str, allowed: ReferencePolicy) -> bytes:
    return fetch(uri, 10_000, 1, policy=allowed)


def test_files_under_the_prefix_are_read_on_segment_boundaries(tree: Path) -> None:
    for prefix in (f"file://{tree}/in", f"file://{tree}/in/"):
        allowed = policy(prefix)
        assert read(f"file://{tree}/in/a.dcm", allowed) == BODY
        assert read(f"file://{tree}/in/sub/../a.dcm", allowed) == BODY  # .. that stays inside
        assert_refused(partial(read, f"file://{tree}/in2/c.dcm", allowed))
        assert_refused(partial(read, f"file://{tree}/secret.dcm", allowed))


def test_an_empty_allow_list_refuses_everything(tree: Path, servers: Any) -> None:
    base, log, _, _ = servers
    nothing = policy()
    for uri in (f"file://{tree}/in/a.dcm", base + "/dicom-web/ok", "s3://x/y", "", "file:"):
        detail = assert_refused(partial(read, uri, nothing))
        assert "SCANSTREAM_REFERENCE_ALLOW is empty" in detail
    assert Settings().reference_allow == ()
    assert (log.connections, log.requests) == (0, [])


def test_dot_dot_escaping_the_prefix_is_refused_before_any_access(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touched: list[bytes] = []
    for name in ("stat", "lstat", "open", "readlink"):
        real = getattr(os, name)

        def spy(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            touched.append(os.fsencode(path) if isinstance(path, str | bytes) else b"")
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    allowed = policy(f"file://{tree}/in/")
    for uri in (f"file://{tree}/in/../secret.dcm", f"file://{tree}/in/sub/../../secret.dcm"):
        detail = assert_refused(partial(read, uri, allowed))
        assert "outside the prefixes" in detail
    assert_refused(partial(read, f"file://{tree}/elsewhere/x.dcm", allowed))
    monkeypatch.undo()
    assert touched  # the spies saw the prefix being resolved ...
    assert not [p for p in touched if b"secret" in p or b"elsewhere" in p], touched  # only


def test_a_symlink_pointing_out_is_refused_and_says_nothing_of_its_target(tree: Path) -> None:
    (tree / "in" / "to-secret.dcm").symlink_to(tree / "secret.dcm")
    (tree / "in" / "to-nothing.dcm").symlink_to(tree / "missing.dcm")
    (tree / "in" / "up").symlink_to(tree)  # a folder link: in/up/secret.dcm
    allowed = policy(f"file://{tree}/in/")
    details = []
    for name in ("to-secret.dcm", "to-nothing.dcm", "up/secret.dcm"):
        uri = f"file://{tree}/in/{name}"
        detail = assert_refused(partial(read, uri, allowed), "missing", "not found", f"{tree}/s")
        details.append(detail.replace(repr(uri), "URI"))
    assert len(set(details)) == 1  # existing or not, file or folder link: the same words
    (tree / "in" / "inside.dcm").symlink_to(tree / "in" / "a.dcm")
    assert read(f"file://{tree}/in/inside.dcm", allowed) == BODY


def test_a_link_swapped_in_after_the_check_is_caught_once_open(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "away").mkdir()
    (tree / "away" / "b.dcm").write_bytes(b"secret")
    real_open = os.open

    def swapping_open(path: Any, *args: Any, **kwargs: Any) -> int:
        os.rename(tree / "in" / "sub", tree / "in" / "old")  # between the check and the open
        os.symlink(tree / "away", tree / "in" / "sub")
        return real_open(path, *args, **kwargs)

    allowed = policy(f"file://{tree}/in/")
    with monkeypatch.context() as patch:
        patch.setattr(fetch_module.os, "open", swapping_open)
        assert_refused(partial(read, f"file://{tree}/in/sub/b.dcm", allowed), "away")


def test_a_file_uri_with_a_host_is_refused(tree: Path) -> None:
    allowed = policy(f"file://{tree}/in/")
    for host in ("localhost", "remote.example", "127.0.0.1"):
        detail = assert_refused(partial(read, f"file://{host}{tree}/in/a.dcm", allowed))
        assert "with a host" in detail


def test_non_regular_files_inside_the_prefix_are_fetch_errors(tree: Path) -> None:
    os.mkfifo(tree / "in" / "pipe")
    allowed = policy(f"file://{tree}/in/")
    for name in ("pipe", "sub"):
        detail = assert_refused(
            partial(read, f"file://{tree}/in/{name}", allowed), reason="fetch_error"
        )
        assert "not a regular file" in detail
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tree / "in" / "sock"))
        assert_refused(partial(read, f"file://{tree}/in/sock", allowed), reason="fetch_error")


# --- HTTP --------------------------------------------------------------------------------------


def test_http_under_the_prefix_is_read_and_the_rest_never_reached(servers: Any) -> None:
    base, log, other, other_log = servers
    port = base.rsplit(":", 1)[1]
    allowed = policy(base + "/dicom-web/")
    assert read(base + "/dicom-web/ok", allowed) == BODY
    assert read(f"HTTP://127.0.0.1:{port}/x", policy(base)) == BODY  # a prefix with no path
    assert read(base + "/dicom-web/in", allowed) == BODY  # a redirect inside: followed
    seen = len(log.requests)
    refused = [
        base + "/dicom-webx/ok",  # not on a segment boundary
        base + "/other/ok",  # same host and port, another path
        base + "/",
        other + "/dicom-web/ok",  # same host, another port
        base.replace("http://", "https://") + "/dicom-web/ok",  # another scheme
        base.replace("127.0.0.1", "localhost") + "/dicom-web/ok",  # another host name
        base.replace("http://", "http://user:pw@") + "/dicom-web/ok",  # userinfo
        base.replace("http://", "http://user@") + "/dicom-web/ok",
        base + "/dicom-web/../admin",
        base + "/dicom-web/./ok",
        base + "/dicom-web/%2e%2e/admin",
        base + "/dicom-web/%2E%2E/admin",
        base + "/dicom-web/.%2e/admin",
        base + "/dicom-web/%2e/ok",
        base + "/dicom-web/..%2fadmin",
        base + "/dicom-web/..\\admin",
    ]
    for uri in refused:
        assert_refused(partial(read, uri, allowed), "pw", "HTTP", "200")
    assert len(log.requests) == seen and other_log.connections == 0


def test_a_redirect_out_of_the_prefixes_is_refused_before_connecting(servers: Any) -> None:
    base, log, other, other_log = servers
    other_port = other.rsplit(":", 1)[1]
    detail = assert_refused(
        partial(read, base + "/dicom-web/out", policy(base + "/dicom-web/")),
        other_port,
        "302",
        "Location:",
    )
    assert "redirect left the prefixes" in detail
    assert [path for path, _ in log.requests] == ["/dicom-web/out"]
    assert (other_log.connections, other_log.requests) == (0, [])


def test_bearer_token_goes_to_allowed_hops_only(servers: Any) -> None:
    base, log, _, other_log = servers
    allowed = policy(base + "/dicom-web/", auth="bearer T0KEN")
    assert "T0KEN" not in repr(allowed) and "T0KEN" not in str(allowed.authorization)
    assert read(base + "/dicom-web/in", allowed) == BODY  # two hops, both allowed
    assert [h.get("Authorization") for _, h in log.requests] == ["Bearer T0KEN"] * 2
    assert_refused(partial(read, base + "/dicom-web/out", allowed), "T0KEN")
    assert (other_log.connections, other_log.requests) == (0, [])
    for uri in (base + "/other", base + "/dicom-web/../x"):
        assert_refused(partial(read, uri, allowed), "T0KEN")
    assert len(log.requests) == 3  # ok, ok, out


def test_basic_credentials_are_sent_base64(servers: Any) -> None:
    base, log, _, _ = servers
    assert read(base + "/dicom-web/ok", policy(base, auth="basic USER:PASSWORD")) == BODY
    expected = "Basic " + base64.b64encode(b"USER:PASSWORD").decode()
    assert log.requests[-1][1]["Authorization"] == expected == "Basic VVNFUjpQQVNTV09SRA=="
    assert read(base + "/dicom-web/ok", policy(base)) == BODY
    assert "Authorization" not in log.requests[-1][1]  # none set: none sent


def test_the_token_is_in_no_failure() -> None:
    with socket.socket() as probe:  # a closed port: connection refused, a TransientError
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError) as info:
        read(f"http://127.0.0.1:{port}/x", policy(f"http://127.0.0.1:{port}/", auth="bearer T0KEN"))
    assert "T0KEN" not in f"{info.value} {info.value!r} {info.value.detail}"


def test_default_ports_and_host_case() -> None:
    allowed = policy("https://PACS.example/dicom-web", "http://pacs.example:8080/")
    allowed.check_web("https://pacs.example:443/dicom-web")
    allowed.check_web("https://pacs.EXAMPLE/dicom-web/studies/1.2.3?x=y")
    allowed.check_web("http://pacs.example:8080/anything")
    for url in (
        "http://pacs.example/dicom-web/x",  # port 80, scheme http
        "https://pacs.example:8443/dicom-web/x",
        "https://pacs.example/dicom-webx",
        "http://pacs.example:8081/anything",
    ):
        with pytest.raises(Rejection, match="reference_refused"):
            allowed.check_web(url)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        "file://host/data/",
        "file://localhost/data/",
        "file:relative/dir",
        "data/incoming",
        "ftp://pacs.example/",
        "https:///no-host/",
        "https://pacs.example:99999/",
        "https://user:s3cret@pacs.example/",
        "https://pacs.example/a/../b/",
        "https://pacs.example/a/?q=1",
        "https://pacs.example/a/#f",
    ],
)
def test_bad_prefixes_fail_at_start(prefix: str) -> None:
    with pytest.raises(ConfigError, match="SCANSTREAM_REFERENCE_ALLOW") as info:
        Settings.from_env({"SCANSTREAM_REFERENCE_ALLOW": f"file:///ok/,{prefix}"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError):
        Settings(reference_allow=(prefix,))


def test_good_prefixes_are_parsed_from_the_environment() -> None:
    raw = "file:///data/incoming/, https://pacs.example/dicom-web/,http://h:8080"
    s = Settings.from_env({"SCANSTREAM_REFERENCE_ALLOW": raw})
    assert s.reference_allow == (
        "file:///data/incoming/",
        "https://pacs.example/dicom-web/",
        "http://h:8080",
    )
    assert ReferencePolicy.from_settings(s).allow == s.reference_allow


@pytest.mark.parametrize(
    "value",
    ["T0PSECRET", "bearer", "bearer  ", "bearer T0P SECRET", "bearer T0P\nSECRET",
     "basic T0PSECRET", "basic :T0PSECRET", "digest T0P:SECRET", "basic T0P:SEC\rRET"],
)  # fmt: skip
def test_bad_auth_fails_at_start_without_showing_it(value: str, tmp_path: Path) -> None:
    for env in (
        {"SCANSTREAM_REFERENCE_AUTH": value},
        {"SCANSTREAM_REFERENCE_AUTH_FILE": str(tmp_path / "auth")},
    ):
        (tmp_path / "auth").write_text(value + "\n")
        with pytest.raises(ConfigError, match="SCANSTREAM_REFERENCE_AUTH") as info:
            Settings.from_env(env)
        assert "T0P" not in str(info.value) and "SEC" not in str(info.value)
    with pytest.raises(ConfigError, match="SCANSTREAM_REFERENCE_AUTH"):
        Settings(reference_auth=Secret(value))


def test_auth_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("bearer T0KEN\n")
    s = Settings.from_env(
        {"SCANSTREAM_REFERENCE_AUTH_FILE": str(tmp_path / "auth"),
         "SCANSTREAM_REFERENCE_ALLOW": "https://pacs.example/"}
    )  # fmt: skip
    assert ReferencePolicy.from_settings(s).headers() == {"Authorization": "Bearer T0KEN"}
    assert "T0KEN" not in repr(s) and "T0KEN" not in str(s.describe())
    basic = Settings.from_env({"SCANSTREAM_REFERENCE_AUTH": "Basic USER:PASS WORD"})
    header = ReferencePolicy.from_settings(basic).headers()["Authorization"]
    assert base64.b64decode(header.split()[1]) == b"USER:PASS WORD"


def test_publish_names_the_folders_the_worker_must_allow(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "c")
    files = [tmp_path / "a" / "x.dcm", tmp_path / "a" / "b" / "y.dcm", tmp_path / "link" / "z.dcm"]
    line = reference_allow_line(files)
    real = tmp_path.resolve()
    assert line == f"SCANSTREAM_REFERENCE_ALLOW={(real / 'a').as_uri()}/,{(real / 'c').as_uri()}/"
    allowed = Settings.from_env({"SCANSTREAM_REFERENCE_ALLOW": line.partition("=")[2]})
    policy_ = ReferencePolicy.from_settings(allowed)
    for f in files:
        f.write_bytes(BODY)
        assert read(f.resolve().as_uri(), policy_) == BODY  # the URI publish_files sends
