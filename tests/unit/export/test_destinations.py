"""Export destinations: SCANSTREAM_EXPORT_TO parsing, STOW-RS against a loopback HTTP server and
C-STORE against an in-process pynetdicom SCP, each answer classified as Sent / Rejected / Failed
/ Unreachable (worker/export/destinations.py, cstore.py, stow.py)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pydicom
import pytest
from loopback_http import serving
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt

from worker.broker import free_port
from worker.contract import ScanEvent
from worker.errors import ConfigError
from worker.export import Failed, Rejected, SendResult, Sent, Unreachable
from worker.export.cstore import SR_STORAGE, CStoreDestination
from worker.export.destinations import open_destination, parse_destination
from worker.export.spec import DestinationSpec
from worker.export.stow import StowDestination
from worker.inference import ModelSet
from worker.pipeline import analyze
from worker.settings import Secret, Settings
from worker.sr import build_sr

PASSWORD = "s3cret-Pa55word"
AUTH = f"basic scan:{PASSWORD}"
AUTH_HEADER = "Basic " + base64.b64encode(f"scan:{PASSWORD}".encode()).decode()
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


# --- the SRs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_sr() -> Callable[[str], bytes]:
    """Part 10 bytes of a real SR (worker.sr.build_sr) of CT_small; one SOP instance per id."""
    path = Path(str(get_testdata_file("CT_small.dcm")))
    source = pydicom.dcmread(path)
    event = ScanEvent("export-test", 0.0, data=path.read_bytes())
    finding = analyze(event, ModelSet.load(), Settings())

    def make(finding_id: str) -> bytes:
        buffer = io.BytesIO()
        sr = build_sr(source, {**finding, "finding_id": finding_id})
        sr.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    return make


@pytest.fixture(scope="module")
def sr(make_sr: Callable[[str], bytes]) -> bytes:
    return make_sr("one")


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


# --- parse_destination -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("dicom://ORTHANC@127.0.0.1:4242", DestinationSpec("dicom", "127.0.0.1", 4242, "ORTHANC")),
        ("dicom://PACS@Pacs.Example:104/", DestinationSpec("dicom", "pacs.example", 104, "PACS")),
        ("dicom://A B@[::1]:11112", DestinationSpec("dicom", "::1", 11112, "A B")),
        ("dicom://SIXTEEN_CHARS_AE@h:1", DestinationSpec("dicom", "h", 1, "SIXTEEN_CHARS_AE")),
        (
            "http://pacs:8042/dicom-web",
            DestinationSpec("stow", "pacs", 8042, url="http://pacs:8042/dicom-web"),
        ),
        (
            "HTTPS://PACS.example/dicom-web/",
            DestinationSpec("stow", "pacs.example", 443, url="https://pacs.example/dicom-web"),
        ),
        ("http://pacs", DestinationSpec("stow", "pacs", 80, url="http://pacs")),
    ],
)
def test_parse_accepts(url: str, expected: DestinationSpec) -> None:
    assert parse_destination(url) == expected


def test_names_and_stow_url() -> None:
    assert parse_destination("dicom://A@[::1]:4242").name == "dicom://A@[::1]:4242"
    spec = parse_destination("https://pacs:8443/dicom-web/")
    assert (spec.name, spec.stow_url) == (
        "https://pacs:8443/dicom-web",
        "https://pacs:8443/dicom-web/studies",
    )
    assert parse_destination("http://pacs").stow_url == "http://pacs/studies"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "SCANSTREAM_EXPORT_TO"),
        ("pacs:4242", "dicom://AET@host:port"),
        ("ftp://pacs/dicom-web", "dicom://AET@host:port"),
        ("dicom://127.0.0.1:4242", "AE title of 1-16"),
        ("dicom://@127.0.0.1:4242", "AE title of 1-16"),
        ("dicom://SEVENTEEN_CHARS_AE@h:1", "AE title of 1-16"),
        ("dicom://ORTHANC@127.0.0.1", "dicom://AET@host:port"),
        ("dicom://ORTHANC@:4242", "dicom://AET@host:port"),
        ("dicom://ORTHANC@h:99999", "not a valid URL"),
        ("dicom://ORTHANC@h:4242/path", "has a path"),
        ("dicom://ORTHANC@h:4242?x=1", "query or fragment"),
        ("http://user:pw@pacs/dicom-web", "put them in SCANSTREAM_EXPORT_AUTH"),
        ("https://token@pacs/dicom-web", "put them in SCANSTREAM_EXPORT_AUTH"),
        ("http://pacs/dicom-web?x=1", "query or fragment"),
        ("http://pacs/dicom-web?", "query or fragment"),
        ("http://pacs/dicom-web#frag", "query or fragment"),
        ("http://pacs/dicom web", "spaces"),
        ("http://pacs/d\u00efcom", "non-ASCII"),
        ("http:///dicom-web", "no valid host"),
        ("http://pacs:0/dicom-web", "no valid host"),
    ],
)
def test_parse_refuses(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_destination(url)
    message = str(err.value)
    assert "SCANSTREAM_EXPORT_TO" in message and says in message
    assert "pw" not in message.replace("pwd", "") and "token" not in message


def test_open_destination() -> None:
    stow = open_destination(Settings(export_to="http://pacs/dicom-web", export_auth=Secret(AUTH)))
    assert isinstance(stow, StowDestination) and stow.name == "http://pacs/dicom-web"
    dicom = open_destination(Settings(export_to="dicom://PACS@pacs:104"))
    assert isinstance(dicom, CStoreDestination) and dicom.name == "dicom://PACS@pacs:104"
    dicom.close()
    with pytest.raises(ConfigError, match="SCANSTREAM_EXPORT_TO is not set"):
        open_destination(Settings())
    with pytest.raises(ConfigError, match="SCANSTREAM_EXPORT_AUTH is for http"):
        open_destination(Settings(export_to="dicom://PACS@pacs:104", export_auth=Secret(AUTH)))
    with pytest.raises(ConfigError, match="SCANSTREAM_EXPORT_AUTH") as err:
        open_destination(Settings(export_to="http://pacs", export_auth=Secret("digest x y")))
    assert "digest" not in str(err.value)
    with pytest.raises(ConfigError, match="SCANSTREAM_EXPORT_CALLING_AE_TITLE"):
        open_destination(Settings(export_to="dicom://P@h:1", export_calling_ae_title="\u00e9"))


# --- STOW-RS -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes | None = None  # None: Orthanc's reply, the SR in ReferencedSOPSequence
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # wait for it before answering
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


def stow_reply(sop: str, failed: int | None = None, warning: int | None = None) -> bytes:
    """A STOW-RS reply as Orthanc 1.10.1 gives it (00081198 always there, maybe empty)."""
    item = {
        "00081150": {"vr": "UI", "Value": [SR_STORAGE[0]]},
        "00081155": {"vr": "UI", "Value": [sop]},
    }
    doc: dict[str, Any] = {
        "00081198": {"vr": "SQ"},
        "00081199": {"vr": "SQ", "Value": [item]},
    }
    if failed is not None:
        failed_item = {**item, "00081197": {"vr": "US", "Value": [failed]}}
        doc = {"00081198": {"vr": "SQ", "Value": [failed_item]}, "00081199": {"vr": "SQ"}}
    if warning is not None:
        doc["00081196"] = {"vr": "US", "Value": [warning]}
    return json.dumps(doc).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the Reply registered for the first path segment."""

    replies: ClassVar[dict[str, Reply]] = {}

    def do_POST(self) -> None:
        reply = self.replies[self.path.split("/")[1]]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply.requests.append((self.path, dict(self.headers.items()), body))
        if reply.hold is not None:
            reply.hold.wait(30)
            return
        if reply.body is None:
            sop = pydicom.dcmread(io.BytesIO(body.split(b"\r\n\r\n", 1)[1])).SOPInstanceUID
            out = stow_reply(str(sop))
        else:
            out = reply.body.replace(b"ECHO", self.headers.get("Authorization", "").encode())
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    with serving(Handler, daemon_threads=True) as base:
        yield base


@pytest.fixture
def stow(http_base: str) -> Iterator[Callable[..., StowDestination]]:
    """Destinations on the loopback server, each answered with its own Reply."""
    made: list[tuple[Reply, StowDestination]] = []

    def make(reply: Reply, timeout_s: float = 10.0) -> StowDestination:
        key = uuid.uuid4().hex
        Handler.replies[key] = reply
        settings = Settings(
            export_to=f"{http_base}/{key}/dicom-web/",
            export_auth=Secret(AUTH),
            export_timeout_s=timeout_s,
        )
        destination = open_destination(settings)
        assert isinstance(destination, StowDestination)
        made.append((reply, destination))
        return destination

    yield make
    for reply, destination in made:
        destination.close()
        if reply.hold is not None:
            reply.hold.set()


def send(destination: StowDestination | CStoreDestination, data: bytes) -> SendResult:
    result = destination.send(data)
    for secret in (PASSWORD, AUTH_HEADER, AUTH_HEADER.split()[1]):
        assert secret not in result.detail
    assert "\n" not in result.detail and len(result.detail) <= 400
    return result


def test_stow_sent_with_the_request_as_stow_rs_wants(
    stow: Callable[..., StowDestination], sr: bytes
) -> None:
    reply = Reply()
    assert send(stow(reply), sr) == Sent(200, "")
    ((path, headers, body),) = reply.requests
    assert path.endswith("/dicom-web/studies") and path.count("/") == 3
    assert headers["Authorization"] == AUTH_HEADER
    assert headers["Accept"] == "application/dicom+json"
    content_type = headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.rpartition("boundary=")[2]
    assert body.startswith(f"--{boundary}\r\n".encode()) and sr in body


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, stow_reply("S", failed=0xC000), Rejected(0xC000, "")),
        (202, stow_reply("S", failed=0xA900), Rejected(0xA900, "")),
        (202, stow_reply("S", failed=0xA700), Failed(0xA700, "")),
        (409, stow_reply("S", failed=0xC122), Rejected(0xC122, "")),
        (409, b"", Rejected(409, "")),
        (202, stow_reply("S", warning=0xB000), Sent(202, "")),
        (204, b"", Sent(204, "")),
        (200, b"not json", Sent(200, "")),
        # Orthanc 1.10.1 when its Lua filter raised: stored nowhere, failed nowhere.
        (200, b'{"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ"}}', Failed(200, "")),
        (400, stow_reply("S", failed=0xC000), Rejected(400, "")),
        (400, b"", Rejected(400, "")),
        (404, b"", Rejected(404, "")),
        (405, b"", Rejected(405, "")),
        (406, b"", Rejected(406, "")),
        (413, b"", Rejected(413, "")),
        (415, b"", Rejected(415, "")),
        (422, b"", Rejected(422, "")),
        (418, b"", Rejected(418, "")),
        (401, b"", Unreachable("check SCANSTREAM_EXPORT_AUTH")),
        (403, b"", Unreachable("check SCANSTREAM_EXPORT_AUTH")),
        (407, b"", Unreachable("")),
        (408, b"", Unreachable("")),
        (429, b"", Unreachable("")),
        (500, b"", Failed(500, "")),
        (501, b"", Failed(501, "")),
        (507, b"", Failed(507, "")),
        (502, b"", Unreachable("")),
        (503, b"", Unreachable("")),
        (504, b"", Unreachable("")),
    ],
)
def test_stow_classification(
    stow: Callable[..., StowDestination],
    sr: bytes,
    status: int,
    body: bytes,
    expected: SendResult,
) -> None:
    body = body.replace(b'"S"', json.dumps(sop_uid(sr)).encode())
    result = send(stow(Reply(status, body)), sr)
    assert type(result) is type(expected)
    if not isinstance(result, Unreachable):
        assert not isinstance(expected, Unreachable)
        assert result.status == expected.status
    assert expected.detail in result.detail
    assert result.detail.startswith(f"STOW-RS HTTP {status}") or not result.detail
    if isinstance(result, Sent) and status == 202:
        assert "WarningReason 45056" in result.detail


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_stow_redirect_is_not_followed(
    stow: Callable[..., StowDestination], sr: bytes, status: int
) -> None:
    reply = Reply(status, b"", {"Location": "http://127.0.0.1:1/elsewhere"})
    result = send(stow(reply), sr)
    assert isinstance(result, Unreachable)
    assert "redirected; set SCANSTREAM_EXPORT_TO to the final URL" in result.detail
    assert len(reply.requests) == 1


def test_stow_detail_never_shows_the_authorization(
    stow: Callable[..., StowDestination], sr: bytes
) -> None:
    """A server that echoes the header (and the password) in its error body."""
    body = f"bad request from ECHO ({PASSWORD}, scan:{PASSWORD})".encode()
    for status in (400, 500, 502):
        result = send(stow(Reply(status, body)), sr)
        assert result.detail.endswith("bad request from *** (***, ***)")


def test_stow_not_dicom_is_rejected_unsent(stow: Callable[..., StowDestination]) -> None:
    reply = Reply()
    result = send(stow(reply), b"not a DICOM file at all")
    assert isinstance(result, Rejected) and result.status == 0
    assert result.detail.startswith("not a DICOM file")
    assert reply.requests == []


def test_stow_nothing_listening_is_unreachable(sr: bytes) -> None:
    spec = parse_destination(f"http://127.0.0.1:{free_port()}/dicom-web")
    result = send(StowDestination(spec, Secret(AUTH_HEADER), 5.0), sr)
    assert isinstance(result, Unreachable) and "ConnectionRefusedError" in result.detail


def test_stow_unknown_host_is_unreachable(sr: bytes) -> None:
    spec = parse_destination("http://no-such-host.invalid/dicom-web")
    result = send(StowDestination(spec, Secret(""), 5.0), sr)
    assert isinstance(result, Unreachable)


def test_stow_timeout_is_unreachable(stow: Callable[..., StowDestination], sr: bytes) -> None:
    result = send(stow(Reply(hold=threading.Event()), timeout_s=0.3), sr)
    assert isinstance(result, Unreachable) and "timed out" in result.detail


@pytest.fixture(scope="module")
def tls_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The STOW server behind TLS, with a self-signed certificate for 127.0.0.1."""
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
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_stow_tls_is_verified(
    tls_base: tuple[str, Path], sr: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, cert = tls_base
    key = uuid.uuid4().hex
    Handler.replies[key] = Reply()
    spec = parse_destination(f"{base}/{key}/dicom-web")
    result = send(StowDestination(spec, Secret(AUTH_HEADER), 5.0), sr)
    assert isinstance(result, Unreachable) and "TLS certificate not trusted" in result.detail
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts it now
    assert send(StowDestination(spec, Secret(AUTH_HEADER), 5.0), sr) == Sent(200, "")
    assert Handler.replies[key].requests[0][1]["Authorization"] == AUTH_HEADER


def test_stow_reads_at_most_a_mebibyte(stow: Callable[..., StowDestination], sr: bytes) -> None:
    big = b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}'
    result = send(stow(Reply(500, big)), sr)
    assert isinstance(result, Failed) and result.status == 500


# --- C-STORE -----------------------------------------------------------------------------------


@dataclass
class SCP:
    """An in-process C-STORE SCP answering ``status`` (a code, or a function of the dataset)."""

    status: int | Callable[[pydicom.Dataset], int] = 0x0000
    port: int = field(default_factory=free_port)
    classes: tuple[str, ...] = SR_STORAGE
    ae_title: str = "PACS"
    received: list[pydicom.Dataset] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    associations: int = 0
    hold: threading.Event = field(default_factory=threading.Event)
    ae: AE | None = None

    def start(self) -> None:
        self.ae = AE(ae_title=self.ae_title)
        self.ae.require_called_aet = True
        for uid in self.classes:
            self.ae.add_supported_context(uid, UNCOMPRESSED)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_ESTABLISHED, self._established),
        ]
        self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self.ae is not None:
            self.ae.shutdown()  # aborts its associations too, as an SCP going down does
            self.ae = None

    def _established(self, event: Any) -> None:
        self.associations += 1
        self.callers.append(str(event.assoc.requestor.ae_title).strip())

    def _store(self, event: Any) -> int:
        ds = event.dataset
        self.received.append(ds)
        status = self.status(ds) if callable(self.status) else self.status
        if status < 0:  # never answer
            self.hold.wait(30)
        return status


def destination_for(scp: SCP, timeout_s: float = 10.0) -> CStoreDestination:
    settings = Settings(
        export_to=f"dicom://{scp.ae_title}@127.0.0.1:{scp.port}",
        export_calling_ae_title="SCANSTREAM-T",
        export_timeout_s=timeout_s,
    )
    destination = open_destination(settings)
    assert isinstance(destination, CStoreDestination)
    return destination


@contextmanager
def running(scp: SCP, timeout_s: float = 10.0) -> Iterator[CStoreDestination]:
    scp.start()
    destination = destination_for(scp, timeout_s)
    try:
        yield destination
    finally:
        scp.hold.set()
        destination.close()
        scp.stop()


@pytest.fixture(scope="module")
def status_scp() -> Iterator[tuple[SCP, dict[str, int]]]:
    """One SCP for the status cases: it answers each SOP instance the status set for it."""
    statuses: dict[str, int] = {}
    scp = SCP(lambda ds: statuses[str(ds.SOPInstanceUID)])
    scp.start()
    yield scp, statuses
    scp.stop()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, Sent),
        (0xB000, Sent),
        (0xB007, Sent),
        (0x0001, Sent),
        (0xA700, Failed),
        (0xA7FF, Failed),
        (0xFE00, Failed),
        (0xA900, Rejected),
        (0xC000, Rejected),
        (0xC123, Rejected),
        (0x0122, Rejected),
        (0x0110, Rejected),
        (0x0124, Unreachable),
    ],
)
def test_c_store_status(
    status_scp: tuple[SCP, dict[str, int]],
    make_sr: Callable[[str], bytes],
    status: int,
    kind: type,
) -> None:
    scp, statuses = status_scp
    sr = make_sr(f"status-{status}")
    statuses[sop_uid(sr)] = status
    destination = destination_for(scp)
    try:
        result = send(destination, sr)
    finally:
        destination.close()
    assert type(result) is kind
    if not isinstance(result, Unreachable):
        assert result.status == status
    if status:
        assert f"0x{status:04X}" in result.detail
    assert scp.received[-1].SOPInstanceUID == sop_uid(sr)
    assert scp.callers[-1] == "SCANSTREAM-T"


def test_c_store_keeps_the_association_between_sends(make_sr: Callable[[str], bytes]) -> None:
    scp = SCP()
    with running(scp) as destination:
        for i in range(3):
            assert send(destination, make_sr(f"keep-{i}")) == Sent(0, "")
    assert scp.associations == 1 and len(scp.received) == 3


def test_c_store_nothing_listening_is_unreachable(sr: bytes) -> None:
    spec = parse_destination(f"dicom://PACS@127.0.0.1:{free_port()}")
    destination = CStoreDestination(spec, "SCANSTREAM", 5.0)
    try:
        result = send(destination, sr)
    finally:
        destination.close()
    assert isinstance(result, Unreachable) and "no association" in result.detail


def test_c_store_scp_stopped_between_sends_reopens(make_sr: Callable[[str], bytes]) -> None:
    scp = SCP()
    with running(scp) as destination:
        assert send(destination, make_sr("before")) == Sent(0, "")
        scp.stop()
        assert isinstance(send(destination, make_sr("while-down")), Unreachable)
        scp.start()  # the same port
        assert send(destination, make_sr("after")) == Sent(0, "")
        scp.stop()
        scp.start()  # not seen down this time: the kept association is dead, sent on a new one
        assert send(destination, make_sr("after-restart")) == Sent(0, "")
    assert scp.associations == 3
    assert [str(d.SOPInstanceUID) for d in scp.received] == [
        sop_uid(make_sr(n)) for n in ("before", "after", "after-restart")
    ]


class DeadAssociation:
    """A kept association whose peer went away unseen: no response to anything."""

    is_established = True

    def send_c_store(self, ds: pydicom.Dataset) -> pydicom.Dataset:
        return pydicom.Dataset()  # what pynetdicom returns when no response came

    def release(self) -> None:
        self.is_established = False

    def is_alive(self) -> bool:
        return False


def test_c_store_kept_association_dead_unseen_is_replaced(
    make_sr: Callable[[str], bytes],
) -> None:
    scp = SCP()
    with running(scp) as destination:
        assert send(destination, make_sr("first")) == Sent(0, "")
        real, destination._assoc = destination._assoc, DeadAssociation()  # type: ignore[assignment]
        assert real is not None
        real.release()
        assert send(destination, make_sr("second")) == Sent(0, "")  # once more, on a new one
    assert scp.associations == 2 and len(scp.received) == 2


def test_c_store_wrong_called_ae_title_is_unreachable(sr: bytes) -> None:
    scp = SCP()
    scp.start()
    spec = parse_destination(f"dicom://NOT-PACS@127.0.0.1:{scp.port}")
    destination = CStoreDestination(spec, "SCANSTREAM", 5.0)
    try:
        result = send(destination, sr)
    finally:
        destination.close()
        scp.stop()
    assert isinstance(result, Unreachable) and "association rejected" in result.detail
    assert "Called AE title not recognised" in result.detail


def test_c_store_sop_class_not_accepted_is_rejected(sr: bytes) -> None:
    scp = SCP(classes=(pydicom.uid.ComprehensiveSRStorage,))  # not Comprehensive 3D SR
    with running(scp) as destination:
        result = send(destination, sr)
    assert isinstance(result, Rejected) and result.status == 0x0122
    assert "no presentation context" in result.detail and scp.received == []


def test_c_store_no_sr_class_accepted_is_unreachable(sr: bytes) -> None:
    scp = SCP(classes=(pydicom.uid.CTImageStorage,))
    with running(scp) as destination:
        result = send(destination, sr)
    assert isinstance(result, Unreachable) and "aborted" in result.detail


def test_c_store_no_response_is_unreachable(sr: bytes) -> None:
    scp = SCP(status=-1)  # the handler never answers within the DIMSE timeout
    with running(scp, timeout_s=0.5) as destination:
        result = send(destination, sr)
    assert isinstance(result, Unreachable) and "no C-STORE response" in result.detail


def test_c_store_refuses_what_it_cannot_send_unsent() -> None:
    scp = SCP()
    with running(scp) as destination:
        result = send(destination, b"\0" * 200)
        assert isinstance(result, Rejected) and result.status == 0
        assert result.detail.startswith("not a DICOM file")
        ct = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
        result = send(destination, ct)
        assert isinstance(result, Rejected) and "not an SR storage class" in result.detail
    assert scp.received == [] and scp.associations == 0
