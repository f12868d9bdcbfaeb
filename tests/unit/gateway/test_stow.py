"""The STOW-RS receiver over real HTTP on loopback, with a fake durable publisher."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.dicomweb import build_multipart_related
from worker.errors import ConfigError
from worker.gateway.durable import NotDurable, Stored
from worker.gateway.stow import StowServer, serve_stow
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.publisher import InstanceHeader
from worker.settings import MiB, Secret, Settings

CT = "1.2.840.10008.5.1.4.1.1.2"
A700, A900, C000 = 0xA700, 0xA900, 0xC000


@dataclass
class FakePublisher:
    """Returns Stored at once, or raises NotDurable for the SOPInstanceUIDs in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    stored: list[bytes] = field(default_factory=list)
    calls: int = 0

    def store(self, data: bytes, deadline: float | None = None) -> Stored:
        self.calls += 1
        header = InstanceHeader.read(data)
        if header.sop_uid in self.refuse or "*" in self.refuse:
            raise NotDurable("the broker did not acknowledge in time (test)")
        self.stored.append(data)
        return Stored(str(uuid.uuid4()), header, None)


@dataclass
class FakeTracker:
    notes: list[tuple[str, ...]] = field(default_factory=list)

    def note(self, *args: str) -> None:
        self.notes.append(args)


def instance(study: str, i: int) -> bytes:
    return encode_ct(ct_slice(i, 16), study=study, instance=i)


def uids(data: bytes) -> InstanceHeader:
    return InstanceHeader.read(data)


@dataclass
class Rig:
    server: StowServer
    publisher: FakePublisher
    tracker: FakeTracker

    def post(
        self,
        path: str,
        parts: list[bytes] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        method: str = "POST",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on its own connection; ``body`` given: sent as is, with ``headers``."""
        hdrs = dict(headers or {})
        if parts is not None:
            ctype, body = build_multipart_related(parts)
            hdrs.setdefault("Content-Type", ctype)
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.putrequest(method, path)
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            for name, value in hdrs.items():
                conn.putheader(name, value)
            conn.endheaders(body)
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            conn.close()


def start(settings: Settings, refuse: set[str] | None = None) -> Iterator[Rig]:
    publisher, tracker = FakePublisher(refuse or set()), FakeTracker()
    server = serve_stow(settings, publisher, tracker)
    try:
        yield Rig(server, publisher, tracker)
    finally:
        server.close()


SETTINGS = Settings(gateway_http_port=0, max_message_bytes=1 * MiB, gateway_ack_timeout_s=2.0)


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from start(SETTINGS)


def dataset(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert isinstance(doc, dict)
    assert set(doc) <= {"00081190", "00081198", "00081199"}
    for tag, attr in doc.items():
        assert attr["vr"] == ("UR" if tag == "00081190" else "SQ")
    return doc


def referenced(doc: dict[str, Any]) -> list[str]:
    items = doc.get("00081199", {}).get("Value", [])
    for item in items:
        assert set(item) <= {"00081150", "00081155", "00081190"}
        assert item["00081150"]["vr"] == item["00081155"]["vr"] == "UI"
    return [item["00081155"]["Value"][0] for item in items]


def failures(doc: dict[str, Any]) -> list[tuple[str | None, int]]:
    out = []
    for item in doc.get("00081198", {}).get("Value", []):
        assert set(item) == {"00081150", "00081155", "00081197"}
        assert item["00081197"]["vr"] == "US"
        (reason,) = item["00081197"]["Value"]
        out.append(((item["00081155"].get("Value") or [None])[0], reason))
    return out


def test_all_stored_is_200_with_every_instance_referenced(rig: Rig) -> None:
    parts = [instance("s1", i) for i in (1, 2, 3)]
    status, headers, body = rig.post("/studies", parts)
    assert status == 200
    assert headers["Content-Type"] == "application/dicom+json"
    doc = dataset(body)
    assert "00081198" not in doc
    assert referenced(doc) == [uids(p).sop_uid for p in parts]
    assert doc["00081199"]["Value"][0]["00081150"] == {"vr": "UI", "Value": [CT]}
    assert rig.publisher.stored == parts  # the bytes as posted, in order
    first = uids(parts[0])
    assert rig.tracker.notes[0][:4] == (first.study_uid, first.series_uid, first.sop_uid, CT)
    assert len(rig.tracker.notes) == 3


@pytest.mark.parametrize("prefix", ["", "/dicom-web"])
def test_study_in_the_url_fails_instances_of_other_studies(rig: Rig, prefix: str) -> None:
    mine, other = instance("s1", 1), instance("s2", 1)
    status, _, body = rig.post(f"{prefix}/studies/{uids(mine).study_uid}", [mine, other])
    assert status == 202
    doc = dataset(body)
    assert referenced(doc) == [uids(mine).sop_uid]
    assert failures(doc) == [(uids(other).sop_uid, A900)]
    assert rig.publisher.stored == [mine]  # the mismatching one was never published


def test_none_matching_the_study_is_409(rig: Rig) -> None:
    status, _, body = rig.post(
        f"/studies/{uids(instance('s1', 1)).study_uid}/", [instance("s2", 1)]
    )
    assert status == 409
    assert failures(dataset(body)) == [(uids(instance("s2", 1)).sop_uid, A900)]


def test_a_part_that_is_not_dicom_fails_with_c000(rig: Rig) -> None:
    good = instance("s1", 1)
    status, _, body = rig.post("/studies", [good, b"not dicom at all"])
    assert status == 202
    doc = dataset(body)
    assert failures(doc) == [(None, C000)]
    assert doc["00081198"]["Value"][0]["00081155"] == {"vr": "UI"}  # no UID known: no Value
    assert rig.publisher.stored == [good]


def test_a_part_of_another_media_type_fails_with_c000(rig: Rig) -> None:
    ctype, body = build_multipart_related([instance("s1", 1)], "application/octet-stream")
    ctype = ctype.replace('type="application/octet-stream"', 'type="application/dicom"')
    status, _, reply = rig.post("/studies", headers={"Content-Type": ctype}, body=body)
    assert status == 409
    assert failures(dataset(reply)) == [(uids(instance("s1", 1)).sop_uid, C000)]
    assert rig.publisher.calls == 0


def test_not_durable_parts_fail_with_a700_and_the_rest_fast() -> None:
    parts = [instance("s1", i) for i in (1, 2, 3)]
    for rig in start(SETTINGS, refuse={uids(parts[1]).sop_uid}):
        status, _, body = rig.post("/studies", parts)
        assert status == 202
        doc = dataset(body)
        assert referenced(doc) == [uids(parts[0]).sop_uid]
        assert failures(doc) == [(uids(p).sop_uid, A700) for p in parts[1:]]
        assert rig.publisher.calls == 2  # the third was not tried once the broker was away
        assert len(rig.tracker.notes) == 1  # only what was durable is tracked


def test_nothing_durable_is_503_with_retry_after() -> None:
    for rig in start(SETTINGS, refuse={"*"}):
        status, headers, body = rig.post("/studies", [instance("s1", 1), instance("s1", 2)])
        assert status == 503
        assert headers["Retry-After"] == "2"
        assert [r for _, r in failures(dataset(body))] == [A700, A700]
        assert rig.tracker.notes == []


def test_nothing_stored_for_mixed_reasons_is_409() -> None:
    for rig in start(SETTINGS, refuse={"*"}):
        status, _, body = rig.post("/studies", [b"junk", instance("s1", 1)])
        assert status == 409
        assert [r for _, r in failures(dataset(body))] == [C000, A700]


@pytest.mark.parametrize(
    "auth, header",
    [
        ("basic alice:s3cr:et", "Basic " + base64.b64encode(b"alice:s3cr:et").decode()),
        ("bearer T0KEN.x", "Bearer T0KEN.x"),
        ("bearer T0KEN.x", "bearer T0KEN.x"),  # the scheme is case-insensitive (RFC 9110)
    ],
)
def test_auth_accepts_exactly_the_configured_header(auth: str, header: str) -> None:
    settings = SETTINGS.replace(gateway_http_auth=Secret(auth))
    scheme = auth.split()[0].capitalize()
    for rig in start(settings):
        part = [instance("s1", 1)]
        assert rig.post("/studies", part, {"Authorization": header})[0] == 200
        for wrong in (None, header + "x", header[:-1], f"{scheme} ", "Digest x"):
            hdrs = {} if wrong is None else {"Authorization": wrong}
            status, headers, _ = rig.post("/studies", part, hdrs)
            assert status == 401, wrong
            assert headers["WWW-Authenticate"] == f'{scheme} realm="scanstream"'
        assert len(rig.publisher.stored) == 1


@pytest.mark.parametrize("auth", ["basic nocolon", "basic :pw", "bearer two words", "digest xyzzy"])
def test_a_malformed_auth_setting_refuses_to_start(auth: str) -> None:
    publisher, tracker = FakePublisher(), FakeTracker()
    with pytest.raises(ConfigError, match="SCANSTREAM_GATEWAY_HTTP_AUTH") as caught:
        serve_stow(SETTINGS.replace(gateway_http_auth=Secret(auth)), publisher, tracker)
    assert auth.split()[-1] not in str(caught.value)


def test_a_body_above_four_times_max_message_bytes_is_413(rig: Rig) -> None:
    ctype, _ = build_multipart_related([b"x"])
    headers = {"Content-Type": ctype, "Content-Length": str(4 * MiB + 1)}
    status, _, _ = rig.post("/studies", headers=headers)  # headers only: nothing is sent
    assert status == 413
    assert rig.publisher.calls == 0


def test_a_body_of_exactly_the_limit_is_read() -> None:
    # Four times 1 MiB, padded in the preamble: read whole, then parsed.
    ctype, body = build_multipart_related([instance("s1", 1)])
    body = b"p" * (4 * MiB - len(body) - 2) + b"\r\n" + body
    for rig in start(SETTINGS):
        assert rig.post("/studies", headers={"Content-Type": ctype}, body=body)[0] == 200


def test_no_content_length_is_411(rig: Rig) -> None:
    ctype, _ = build_multipart_related([b"x"])
    assert rig.post("/studies", headers={"Content-Type": ctype})[0] == 411


@pytest.mark.parametrize(
    "ctype",
    [
        "application/dicom",
        "multipart/mixed; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "",
    ],
)
def test_another_content_type_is_415(rig: Rig, ctype: str) -> None:
    assert rig.post("/studies", headers={"Content-Type": ctype}, body=b"DICM")[0] == 415


@pytest.mark.parametrize(
    "body",
    [b"", b"--b\r\n\r\ncut short", b"no delimiter at all", b"--b\r\nContent-Type: x\r\n"],
)
def test_a_malformed_body_is_400(rig: Rig, body: bytes) -> None:
    ctype = 'multipart/related; type="application/dicom"; boundary=b'
    status, headers, reply = rig.post("/studies", headers={"Content-Type": ctype}, body=body)
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert reply.startswith(b"malformed multipart/related body")


def test_a_non_numeric_content_length_is_400(rig: Rig) -> None:
    ctype, _ = build_multipart_related([b"x"])
    headers = {"Content-Type": ctype, "Content-Length": "-5"}
    assert rig.post("/studies", headers=headers)[0] == 400


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(rig: Rig, method: str) -> None:
    status, headers, _ = rig.post("/studies", method=method)
    assert status == 405
    assert headers["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/", "/studies/not-a-uid", "/studies/1.2/series", "/x/studies"])
def test_other_paths_are_404(rig: Rig, path: str) -> None:
    assert rig.post(path, [instance("s1", 1)])[0] == 404
    assert rig.publisher.calls == 0


def test_one_log_line_per_request_without_secrets_or_uids(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.gateway.stow")
    settings = SETTINGS.replace(gateway_http_auth=Secret("bearer S3CRET"))
    part = instance("s1", 1)
    for rig in start(settings):
        rig.post("/studies", [part], {"Authorization": "Bearer S3CRET"})
        rig.post("/studies", [part], {"Authorization": "Bearer WR0NG"})
    lines = [r for r in caplog.records if r.name == "worker.gateway.stow"]
    # Each request's line is written by its own handler thread after the reply has gone,
    # so the second request's line may come first: compare them as a set of lines.
    assert sorted(r.getMessage() for r in lines) == ["STOW-RS 200", "STOW-RS 401"]
    by_status = {r.fields["status"]: r.fields for r in lines}
    assert by_status[200] == {"status": 200, "parts": 1, "stored": 1, "failed": 0}
    assert by_status[401] == {"status": 401, "parts": 0, "stored": 0, "failed": 0}
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in ("S3CRET", "WR0NG", uids(part).sop_uid, uids(part).study_uid):
        assert secret not in text


def test_a_stalled_client_is_dropped_after_the_read_timeout(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that announces a body and never sends all of it: the connection is closed
    # without a reply once the socket read times out (shortened here from 30 s).
    monkeypatch.setattr("worker.gateway.stow._Handler.timeout", 0.5)
    ctype, _ = build_multipart_related([b"x"])
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=5) as sock:
        sock.sendall(
            f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            "Content-Length: 100\r\n\r\npartial".encode()
        )
        assert sock.recv(100) == b""  # closed after the timeout, no reply


def test_close_waits_for_a_request_in_progress() -> None:
    release, entered = threading.Event(), threading.Event()

    class Slow(FakePublisher):
        def store(self, data: bytes, deadline: float | None = None) -> Stored:
            entered.set()
            release.wait(5)
            return super().store(data, deadline)

    publisher, tracker = Slow(), FakeTracker()
    rig = Rig(serve_stow(SETTINGS, publisher, tracker), publisher, tracker)
    result: list[int] = []
    client = threading.Thread(
        target=lambda: result.append(rig.post("/studies", [instance("s", 1)])[0])
    )
    client.start()
    assert entered.wait(5)
    closer = threading.Thread(target=rig.server.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # waiting for the request in progress
    release.set()
    closer.join(10)
    client.join(10)
    assert result == [200]


def test_expect_100_continue_is_answered(rig: Rig) -> None:
    # curl sends "Expect: 100-continue" for bodies above 1 KiB and waits for it.
    ctype, body = build_multipart_related([instance("s1", 1)])
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=5) as sock:
        sock.sendall(
            f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert len(rig.publisher.stored) == 1


def test_requests_beyond_max_associations_are_503() -> None:
    release, entered = threading.Event(), threading.Event()

    class Slow(FakePublisher):
        def store(self, data: bytes, deadline: float | None = None) -> Stored:
            entered.set()
            release.wait(5)
            return super().store(data, deadline)

    publisher, tracker = Slow(), FakeTracker()
    settings = SETTINGS.replace(gateway_max_associations=1)
    rig = Rig(serve_stow(settings, publisher, tracker), publisher, tracker)
    try:
        first: list[int] = []
        client = threading.Thread(
            target=lambda: first.append(rig.post("/studies", [instance("s", 1)])[0])
        )
        client.start()
        assert entered.wait(5)
        status, headers, _ = rig.post("/studies", [instance("s", 2)])
        assert (status, headers["Retry-After"]) == (503, "1")
        release.set()
        client.join(10)
        assert first == [200]
    finally:
        release.set()
        rig.server.close()
