"""The export destinations against a real Orthanc (1.10.1 with the DICOMweb plugin): an SR sent
by C-STORE and by STOW-RS (HTTP basic auth) is stored once however often it is sent; what Orthanc
answers for an instance it will not store; Orthanc stopped is Unreachable, started again Sent.

No Kafka here, so no ``integration`` mark. Skipped where Orthanc is not installed (not under
CI: tests/orthanc.py).

Measured (Orthanc 1.10.1, DICOMweb plugin 1.7), for an instance its Lua ``ReceivedInstanceFilter``
refuses by raising ``error()``: C-STORE status 0xA700 (Orthanc answers every storage exception so);
STOW-RS HTTP 200 with the instance in neither ReferencedSOPSequence nor FailedSOPSequence. Both
are ``Failed`` (retried, then a dead letter), not ``Rejected``. A filter returning ``false``
instead is answered 0x0000 / HTTP 200 with the instance referenced: Orthanc reports a discarded
instance as stored, which no client can tell. A permanent refusal Orthanc does give: STOW-RS of an
instance without StudyInstanceUID is HTTP 400 with FailureReason 0xC000 (``Rejected``); the same
over C-STORE is 0xA700 again.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from orthanc import Orthanc, running_orthanc
from pydicom.data import get_testdata_file

from worker.contract import ScanEvent
from worker.export import Failed, Rejected, Sent, Unreachable
from worker.export.cstore import CStoreDestination
from worker.export.destinations import open_destination
from worker.export.stow import StowDestination
from worker.inference import ModelSet
from worker.pipeline import analyze
from worker.settings import Secret, Settings
from worker.sr import build_sr, sop_instance_uid_for

REFUSED = "refused-by-lua"
LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.SOPInstanceUID == "{sop_instance_uid_for(REFUSED)}" then
    error("scanstream test: this instance is refused")
  end
  return true
end
"""


@pytest.fixture(scope="module")
def make_sr() -> Callable[[str], bytes]:
    """Part 10 bytes of a real SR (worker.sr.build_sr) of CT_small; one SOP instance per id."""
    path = Path(str(get_testdata_file("CT_small.dcm")))
    source = pydicom.dcmread(path)
    event = ScanEvent("export-orthanc", 0.0, data=path.read_bytes())
    finding = analyze(event, ModelSet.load(), Settings())

    def make(finding_id: str) -> bytes:
        buffer = io.BytesIO()
        build_sr(source, {**finding, "finding_id": finding_id}).save_as(
            buffer, enforce_file_format=True
        )
        return buffer.getvalue()

    return make


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), lua=LUA) as server:
        yield server


def settings_for(server: Orthanc, kind: str, password: str | None = None) -> Settings:
    user, real = server.auth
    if kind == "dicom":
        return Settings(export_to=f"dicom://{server.aet}@127.0.0.1:{server.dicom_port}")
    auth = Secret(f"basic {user}:{password or real}")
    return Settings(export_to=server.dicomweb, export_auth=auth, export_timeout_s=10.0)


@pytest.fixture
def destinations(
    orthanc: Orthanc,
) -> Iterator[dict[str, CStoreDestination | StowDestination]]:
    made = {kind: open_destination(settings_for(orthanc, kind)) for kind in ("dicom", "stow")}
    assert isinstance(made["dicom"], CStoreDestination)
    assert isinstance(made["stow"], StowDestination)
    yield made
    for destination in made.values():
        destination.close()


def held(server: Orthanc, sop: str) -> list[str]:
    """Orthanc's ids of the instances with this SOP Instance UID."""
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop}}
    found: list[str] = server.json("POST", "/tools/find", json.dumps(query).encode())
    return found


def tags(server: Orthanc, orthanc_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = server.json("GET", f"/instances/{orthanc_id}/simplified-tags")
    return answer


def sop_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


@pytest.mark.parametrize("kind", ["dicom", "stow"])
def test_sent_stored_once_however_often_sent(
    orthanc: Orthanc,
    destinations: dict[str, CStoreDestination | StowDestination],
    make_sr: Callable[[str], bytes],
    kind: str,
) -> None:
    sr = make_sr(f"sent-by-{kind}")
    expected = Sent(0) if kind == "dicom" else Sent(200)
    assert destinations[kind].send(sr) == expected
    (orthanc_id,) = held(orthanc, sop_of(sr))
    stored = tags(orthanc, orthanc_id)
    assert stored["SOPClassUID"] == pydicom.uid.Comprehensive3DSRStorage
    assert stored["SeriesDescription"] == "ScanStream findings (SR)"
    assert destinations[kind].send(sr) == expected  # "already stored" is success
    assert held(orthanc, sop_of(sr)) == [orthanc_id]
    if kind == "stow":  # stored as sent, byte for byte
        _, _, file = orthanc.request("GET", f"/instances/{orthanc_id}/file")
        assert file == sr


def test_instance_refused_by_the_lua_filter(
    orthanc: Orthanc,
    destinations: dict[str, CStoreDestination | StowDestination],
    make_sr: Callable[[str], bytes],
) -> None:
    sr = make_sr(REFUSED)
    by_c_store = destinations["dicom"].send(sr)
    assert isinstance(by_c_store, Failed) and by_c_store.status == 0xA700
    by_stow = destinations["stow"].send(sr)
    assert isinstance(by_stow, Failed) and by_stow.status == 200
    assert "neither in its ReferencedSOPSequence nor in its FailedSOPSequence" in by_stow.detail
    assert held(orthanc, sop_of(sr)) == []
    # The association survives a failure status: the next SR goes on it.
    assert destinations["dicom"].send(make_sr("after-refused")) == Sent(0)


def test_instance_without_study_uid_is_rejected_over_stow(
    orthanc: Orthanc,
    destinations: dict[str, CStoreDestination | StowDestination],
    make_sr: Callable[[str], bytes],
) -> None:
    ds = pydicom.dcmread(io.BytesIO(make_sr("no-study-uid")))
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    by_stow = destinations["stow"].send(buffer.getvalue())
    assert isinstance(by_stow, Rejected) and by_stow.status == 400
    assert "FailureReason 0xC000" in by_stow.detail
    by_c_store = destinations["dicom"].send(buffer.getvalue())
    assert isinstance(by_c_store, Failed) and by_c_store.status == 0xA700


def test_wrong_password_is_unreachable(orthanc: Orthanc, make_sr: Callable[[str], bytes]) -> None:
    destination = open_destination(settings_for(orthanc, "stow", password="wrong-Pa55word"))
    result = destination.send(make_sr("wrong-password"))
    assert isinstance(result, Unreachable) and "check SCANSTREAM_EXPORT_AUTH" in result.detail
    assert "wrong-Pa55word" not in result.detail


def test_orthanc_stopped_is_unreachable_then_sent_once_started(
    tmp_path: Path, make_sr: Callable[[str], bytes]
) -> None:
    with running_orthanc(tmp_path) as server:
        made = [open_destination(settings_for(server, kind)) for kind in ("dicom", "stow")]
        try:
            for destination in made:
                assert isinstance(destination.send(make_sr(f"up-{destination.name}")), Sent)
            server.stop(kill=True)  # a crash: Orthanc would wait for the open association
            for destination in made:
                result = destination.send(make_sr(f"down-{destination.name}"))
                assert isinstance(result, Unreachable), result
            server.start()
            for destination in made:  # the C-STORE one on a new association
                sr = make_sr(f"back-{destination.name}")
                assert isinstance(destination.send(sr), Sent)
                assert len(held(server, sop_of(sr))) == 1
            for destination in made:  # the same storage: what was sent before is still there
                assert len(held(server, sop_of(make_sr(f"up-{destination.name}")))) == 1
        finally:
            for destination in made:
                destination.close()
