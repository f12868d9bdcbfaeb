"""Reference events that point at a real Orthanc's WADO-RS URLs (HTTP basic auth on), through
the real broker and worker: each ends in a finding of the very file uploaded (no transcoding),
wrong credentials in a ``fetch_error`` dead letter, an allow-list without Orthanc in
``reference_refused``. Skipped where Orthanc is not installed (not under CI: tests/orthanc.py)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from kafka_helpers import Collected, collect, worker_thread
from orthanc import Orthanc, running_orthanc

from worker.contract import decode_headers, rfc3339, validation_errors
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers
from worker.settings import Secret, Settings

pytestmark = pytest.mark.integration

# Explicit VR Little Endian (CT, MR), JPEG 2000, JPEG baseline: a transcoding server would
# change the compressed ones at least.
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm")


@dataclass(frozen=True)
class Stored:
    name: str
    data: bytes
    study: str
    sop: str
    transfer_syntax: str
    url: str


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, pydicom_files: Path
) -> Iterator[tuple[Orthanc, list[Stored]]]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        stored = []
        for name in SAMPLES:
            data = (pydicom_files / name).read_bytes()
            assert server.upload(data)["Status"] == "Success"
            ds = pydicom.dcmread(pydicom_files / name, stop_before_pixels=True)
            study, series, sop = (
                str(ds[k].value)
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            )
            ts = str(ds.file_meta.TransferSyntaxUID)
            stored.append(Stored(name, data, study, sop, ts, server.wado_url(study, series, sop)))
        assert len({s.transfer_syntax for s in stored}) == 3
        yield server, stored


def publish_references(settings: Settings, stored: list[Stored]) -> dict[str, Stored]:
    """One reference event per stored instance, with its size and sha256; by event id."""
    assert settings.bootstrap_servers
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    sent = {}
    try:
        for item in stored:
            event_id = f"{item.name}-{uuid.uuid4().hex[:6]}"
            sent_at = time.time()
            doc = {
                "uri": item.url,
                "event_id": event_id,
                "sent_at": rfc3339(sent_at),
                "study_instance_uid": item.study,
                "sop_instance_uid": item.sop,
                "size_bytes": len(item.data),
                "sha256": hashlib.sha256(item.data).hexdigest(),
            }
            assert validation_errors("scan-event.v1", doc) == []
            producer.send(
                settings.events_topic,
                key=item.study.encode(),
                value=json.dumps(doc).encode(),
                headers=event_headers(event_id, sent_at, "application/json"),
            )
            sent[event_id] = item
        producer.flush()
    finally:
        producer.close()
    return sent


def error_headers(record: Any) -> dict[str, str | None]:
    return decode_headers(record.headers)


def json_value(record: Any) -> Any:
    return json.loads(record.value)


def run(settings: Settings, stored: list[Stored]) -> tuple[dict[str, Stored], Collected]:
    sent = publish_references(settings, stored)
    with worker_thread(settings):
        got = collect(settings, expected=len(sent))
    assert len(got.findings) + len(got.dead_letters) == len(sent)
    return sent, got


def test_wado_rs_references_end_in_findings_of_the_stored_files(
    orthanc: tuple[Orthanc, list[Stored]], isolated_settings: Settings
) -> None:
    server, stored = orthanc
    user, password = server.auth
    settings = isolated_settings.replace(
        reference_allow=(server.dicomweb,), reference_auth=Secret(f"basic {user}:{password}")
    )
    sent, got = run(settings, stored)
    reasons = [error_headers(r).get("scanstream.error.detail") for r in got.dead_letters]
    assert got.dead_letters == [], reasons
    findings = {doc["event_id"]: doc for doc in map(json_value, got.findings)}
    assert set(findings) == set(sent)
    for event_id, item in sent.items():
        finding = findings[event_id]
        assert validation_errors("finding.v1", finding) == []
        assert finding["sop_instance_uid"] == item.sop, item.name
        # As stored: the event's size and sha256 of the original file were checked too.
        assert finding["transfer_syntax"] == item.transfer_syntax, item.name


def test_wrong_credentials_are_a_fetch_error(
    orthanc: tuple[Orthanc, list[Stored]], isolated_settings: Settings
) -> None:
    server, stored = orthanc
    settings = isolated_settings.replace(
        reference_allow=(server.dicomweb,), reference_auth=Secret("basic scan:wrong-password")
    )
    _, got = run(settings, stored[:1])
    assert got.findings == []
    headers = error_headers(got.dead_letters[0])
    assert headers["scanstream.error.reason"] == "fetch_error"
    assert "HTTP 401" in (headers["scanstream.error.detail"] or "")
    assert "wrong-password" not in json.dumps(headers)


def test_an_allow_list_without_orthanc_refuses_the_reference(
    orthanc: tuple[Orthanc, list[Stored]], isolated_settings: Settings
) -> None:
    server, stored = orthanc
    user, password = server.auth
    settings = isolated_settings.replace(
        reference_allow=(f"{server.base}/other-root/",),
        reference_auth=Secret(f"basic {user}:{password}"),
    )
    _, got = run(settings, stored[:1])
    assert got.findings == []
    headers = error_headers(got.dead_letters[0])
    assert headers["scanstream.error.reason"] == "reference_refused", headers
