"""A real Orthanc (with the DICOMweb plugin) for integration tests, on free loopback ports.

``running_orthanc(tmp_path)`` writes a configuration into ``tmp_path`` (storage, index, log),
starts ``/usr/sbin/Orthanc`` with HTTP basic authentication on and remote access off, waits until
``GET /system`` answers, yields an :class:`Orthanc` handle and stops the server at the end. Where
Orthanc is not installed the test is skipped, except under ``CI`` (set): CI installs it
(``apt-get install orthanc orthanc-dicomweb``), so there a missing Orthanc fails the test.

Talks HTTP with :mod:`urllib` only, always through a proxy-less opener (loopback).

Measured on Debian's Orthanc 1.10.1 with DICOMweb plugin 1.7 (see also worker/dicomweb.py):
WADO-RS returns the stored file byte for byte when asked with ``transfer-syntax=*``; a wrong
password is HTTP 401 with an empty body. ``store_to`` (C-STORE SCU) offers the stored transfer
syntax and, if the peer refuses it, transcodes to Explicit/Implicit VR Little Endian, which fails
(HTTP 500 "Cannot transcode") for JPEG 2000: an SCP under test must accept compressed syntaxes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from worker.broker import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Process:
    """The Orthanc process of one handle: started and stopped on the same config (ports,
    storage, index), so a restarted server holds what the stopped one stored."""

    def __init__(self, config: Path, cwd: Path, log: Path) -> None:
        self.config, self.cwd, self.log = config, cwd, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, server: Orthanc) -> None:
        if self.popen is not None:
            raise AssertionError("Orthanc is running already")
        with self.log.open("ab") as sink:  # appended: the log of every run is kept
            self.popen = subprocess.Popen(
                [str(ORTHANC), "--no-jobs", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        try:
            _wait_ready(server, self.popen)
        except BaseException:
            self.stop()
            raise

    def stop(self, kill: bool = False) -> None:
        process, self.popen = self.popen, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its HTTP base URL (no trailing slash), DICOM port and AE title.

    :meth:`stop` and :meth:`start` take the same server down and bring it back (same ports,
    same storage): a destination that goes away for a while.
    """

    base: str
    dicom_port: int
    aet: str
    auth: tuple[str, str]
    log: Path
    _process: _Process | None = field(default=None, repr=False, compare=False)

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 15 s; ``kill``: SIGKILL at once (a
        crash). Nothing if stopped already. A graceful stop waits for each DICOM association
        still open to carry one more request or to idle out (Orthanc's ``DicomScpTimeout``,
        30 s): with an idle association kept open by a peer it ends in the SIGKILL after 15 s
        (measured); use ``kill=True`` there, or close the association first."""
        if self._process is None:
            raise AssertionError("this Orthanc handle was not made by running_orthanc")
        self._process.stop(kill)

    def start(self) -> None:
        """Start the stopped server again on the same ports and storage; waits until ready."""
        if self._process is None:
            raise AssertionError("this Orthanc handle was not made by running_orthanc")
        self._process.start(self)

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root, with a trailing slash (what a worker's allow-list names)."""
        return f"{self.base}/dicom-web/"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request; an HTTP error status is returned, not raised."""
        user, password = auth or self.auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request = urllib.request.Request(
            self.base + path,
            data=body,
            method=method,
            headers={"Authorization": f"Basic {token}", **(headers or {})},
        )
        try:
            with _OPENER.open(request, timeout=30) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):  # it holds the response: close it (ResourceWarning)
                return exc.code, dict(exc.headers.items()), exc.read()

    def json(self, method: str, path: str, body: bytes | None = None) -> Any:
        status, _, data = self.request(method, path, body)
        if not 200 <= status < 300:
            raise AssertionError(f"Orthanc: {method} {path} answered HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def upload(self, data: bytes) -> dict[str, Any]:
        """POST /instances: Orthanc's answer (``ID``, ``ParentStudy``, ``Status``...)."""
        answer: dict[str, Any] = self.json("POST", "/instances", data)
        return answer

    def wado_url(self, study: str, series: str, sop: str) -> str:
        """The WADO-RS URL of one instance, by its DICOM UIDs."""
        return f"{self.dicomweb}studies/{study}/series/{series}/instances/{sop}"

    def store_to(self, modality: str, orthanc_id: str) -> dict[str, Any]:
        """C-STORE one resource (instance, series or study) to a configured modality; waits."""
        body = json.dumps({"Resources": [orthanc_id], "Synchronous": True}).encode()
        answer: dict[str, Any] = self.json("POST", f"/modalities/{modality}/store", body)
        return answer


def _config(
    tmp_path: Path,
    http_port: int,
    dicom_port: int,
    modalities: Mapping[str, tuple[str, str, int]],
    auth: tuple[str, str],
) -> dict[str, Any]:
    return {
        "Name": "scanstream-test",
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {auth[0]: auth[1]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "HttpDescribeErrors": True,
        "SaveJobs": False,
        "StableAge": 1,
        "DicomScuTimeout": 10,
    }


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_orthanc(
    tmp_path: Path,
    dicom_modalities: Mapping[str, tuple[str, str, int]] | None = None,
    auth: tuple[str, str] | None = None,
    lua: str | None = None,
) -> Iterator[Orthanc]:
    """A fresh Orthanc for the block; ``dicom_modalities``: name -> (AET, host, port).

    ``auth`` defaults to user ``scan`` with a random password (see ``Orthanc.auth``). ``lua``:
    a Lua script Orthanc runs (written to ``orthanc.lua``, named in ``LuaScripts``), e.g. a
    ``ReceivedInstanceFilter``; see tests/integration/test_export_destinations.py for what
    Orthanc 1.10.1 answers when that filter refuses an instance.
    """
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        why = f"no {ORTHANC} or {DICOMWEB_PLUGIN}: apt-get install orthanc orthanc-dicomweb"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI is set, and CI installs them)")
        pytest.skip(why)
    auth = auth or ("scan", secrets.token_urlsafe(12))
    http_port, dicom_port = free_port(), free_port()
    config = tmp_path / "orthanc.json"
    cfg = _config(tmp_path, http_port, dicom_port, dicom_modalities or {}, auth)
    if lua is not None:
        script = tmp_path / "orthanc.lua"
        script.write_text(lua)
        cfg["LuaScripts"] = [str(script)]
    config.write_text(json.dumps(cfg, indent=2))
    log = tmp_path / "orthanc.log"
    log.write_bytes(b"")
    process = _Process(config, tmp_path, log)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", auth, log, process)
    process.start(server)
    try:
        yield server
    finally:
        process.stop()


def _wait_ready(server: Orthanc, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"Orthanc exited with {process.returncode} at start; log tail:\n{_tail(server.log)}"
            )
        try:
            status, _, body = server.request("GET", "/system")
        except OSError as exc:  # not listening yet
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.1)
    raise AssertionError(
        f"Orthanc did not answer GET /system within {START_TIMEOUT_S:g} s ({last}); "
        f"log tail:\n{_tail(server.log)}"
    )
