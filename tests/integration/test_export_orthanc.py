"""DICOM results back in a real PACS: instances in, the worker with the SR topic on, and
``scanstream export``'s loop to a real Orthanc by C-STORE and by STOW-RS. Each SR lands in its
source instance's study, Orthanc's REST API returns it with the finding's classifications, and a
second export of the same SRs (a replay) leaves one copy of each. Skipped where Orthanc is not
installed (not under CI: tests/orthanc.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from export_helpers import (
    exporter_thread,
    lesion_calls,
    phantom,
    publish,
    stored_srs,
    study_of,
    wait_for,
)
from kafka_helpers import at_least, read_topics, worker_thread
from orthanc import Orthanc, running_orthanc
from tooling import dciodvfy_errors

from worker.runtime import kafka as kafka_clients
from worker.settings import Secret, Settings
from worker.sr import sop_instance_uid_for

pytestmark = pytest.mark.integration


def destination(orthanc: Orthanc, protocol: str) -> dict[str, object]:
    if protocol == "c-store":
        return {"export_to": f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"}
    user, password = orthanc.auth
    return {
        "export_to": orthanc.dicomweb.rstrip("/"),
        "export_auth": Secret(f"basic {user}:{password}"),
    }


@pytest.mark.parametrize("protocol", ["c-store", "stow-rs"])
def test_each_sr_lands_in_its_source_study_and_a_replay_keeps_one_copy(
    protocol: str, tmp_path: Path, isolated_settings: Settings, pydicom_files: Path
) -> None:
    with running_orthanc(tmp_path) as orthanc:
        sources = [(pydicom_files / "CT_small.dcm").read_bytes(), phantom(1), phantom(2)]
        for data in sources:  # the PACS has the studies the SRs belong to
            assert orthanc.upload(data)["Status"] == "Success"
        settings = isolated_settings.replace(
            sr_topic=f"{isolated_settings.group_id}.sr", **destination(orthanc, protocol)
        )
        assert settings.bootstrap_servers and settings.sr_topic
        kafka_clients.ensure_topics(settings.bootstrap_servers, settings)
        publish(settings, sources)
        with worker_thread(settings), exporter_thread(settings) as exporter:
            wait_for(lambda: len(stored_srs(orthanc)) >= len(sources), 120, "the SRs in Orthanc")
        topics = read_topics(
            settings,
            [settings.findings_topic, settings.sr_topic, settings.dlq_topic],
            at_least({settings.findings_topic: 3, settings.sr_topic: 3}),
        )
        assert topics[settings.dlq_topic] == [] and exporter.sent == 3
        findings = [json.loads(r.value) for r in topics[settings.findings_topic]]
        stored = stored_srs(orthanc)
        assert set(stored) == {sop_instance_uid_for(f["finding_id"]) for f in findings}
        source_study = {
            pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: pydicom.dcmread(io.BytesIO(d))
            for d in sources
        }
        for finding in findings:
            instance = stored[sop_instance_uid_for(finding["finding_id"])]
            source = source_study[finding["sop_instance_uid"]]
            assert study_of(orthanc, instance) == source.StudyInstanceUID
            status, _, body = orthanc.request("GET", f"/instances/{instance}/file")
            assert status == 200
            (tmp_path / "sr.dcm").write_bytes(body)  # as the worker built it, through the PACS
            errors, output = dciodvfy_errors(tmp_path / "sr.dcm")
            assert errors == [], output
            sr = pydicom.dcmread(io.BytesIO(body))
            assert sr.PatientID == source.PatientID and sr.SeriesInstanceUID != (
                source.SeriesInstanceUID
            )
            want = {c["model"]: bool(c["positive"]) for c in finding["classifications"]}
            assert lesion_calls(sr) == want

        # A replay (a second group reads the topic from the start): the same SOP Instance UIDs,
        # so Orthanc keeps one copy of each.
        again = settings.replace(export_group_id=f"{settings.group_id}-replay")
        with exporter_thread(again) as replay:
            wait_for(lambda: replay.sent >= 3, 60, "the replayed SRs")
        assert sorted(stored_srs(orthanc)) == sorted(stored)
        assert len(orthanc.json("GET", "/instances")) == len(sources) + 3
