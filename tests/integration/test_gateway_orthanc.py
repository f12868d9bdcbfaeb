"""A real PACS on the sending side: Orthanc forwards its stored instances to the gateway by
C-STORE (in their stored transfer syntax, JPEG 2000 included), and each one ends in a finding."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.kafka_helpers import collect, worker_thread
from tests.orthanc import running_orthanc
from worker.broker import free_port
from worker.gateway.service import Gateway
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"]


def test_orthanc_forwards_its_instances_to_the_gateway_and_each_ends_in_a_finding(
    isolated_settings: Settings, pydicom_files: Path, tmp_path: Path
) -> None:
    settings = isolated_settings.replace(gateway_port=free_port(), study_quiet_s=1.0)
    assert settings.bootstrap_servers
    kafka_clients.ensure_topics(
        settings.bootstrap_servers, settings, also=(settings.studies_topic,)
    )
    modality = {"gw": (settings.gateway_ae_title, "127.0.0.1", settings.gateway_port)}
    gateway = Gateway(settings, settings.bootstrap_servers)
    gateway.start()
    try:
        with running_orthanc(tmp_path, dicom_modalities=modality) as orthanc:
            ids, expected = [], {}
            for name in FILES:
                data = (pydicom_files / name).read_bytes()
                answer = orthanc.upload(data)
                assert answer["Status"] == "Success", answer
                ids.append(answer["ID"])
                ds = pydicom.dcmread(pydicom_files / name, stop_before_pixels=True)
                expected[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
            with worker_thread(settings):
                for orthanc_id in ids:
                    orthanc.store_to("gw", orthanc_id)  # synchronous: Orthanc saw Success
                got = collect(settings, expected=len(FILES))
    finally:
        gateway.stop()
    assert gateway.scp.stored == len(FILES)
    assert got.dead_letters == []
    findings = [json.loads(r.value) for r in got.findings]  # type: ignore[attr-defined]
    assert {f["sop_instance_uid"]: f["transfer_syntax"] for f in findings} == expected
