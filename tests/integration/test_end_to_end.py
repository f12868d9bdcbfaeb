"""Real pydicom files through the real broker: exactly one finding per instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka_helpers import collect, worker_thread

from worker.contract import validation_errors
from worker.runtime.publisher import publish_files
from worker.settings import Settings

pytestmark = pytest.mark.integration

GOOD = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "693_J2KI.dcm",
    "rtdose.dcm",
]


@pytest.mark.parametrize("compute_process", [False, True], ids=["thread", "process"])
def test_real_dicom_files_yield_exactly_one_finding_each(
    isolated_settings: Settings, pydicom_files: Path, compute_process: bool
) -> None:
    """Also with the pipeline in a child process (``SCANSTREAM_COMPUTE_PROCESS``)."""
    settings = isolated_settings.replace(compute_process=compute_process)
    assert settings.bootstrap_servers
    paths = [pydicom_files / name for name in GOOD]
    with worker_thread(settings):
        sent = publish_files(paths, settings.bootstrap_servers, settings)
        got = collect(settings, expected=len(sent))
    findings = [json.loads(r.value) for r in got.findings]
    print(f"sent={len(sent)} findings={len(findings)} dead_letters={len(got.dead_letters)}")
    assert got.dead_letters == []
    assert sorted(f["event_id"] for f in findings) == sorted(p.event_id for p in sent)
    for finding in findings:
        assert validation_errors("finding.v1", finding) == []
        assert finding["source"]["topic"] == settings.events_topic
        assert finding["latency_ms"] >= 0
    by_name = {Path(p.path).name: p.event_id for p in sent}
    multi = next(f for f in findings if f["event_id"] == by_name["examples_ybr_color.dcm"])
    assert multi["frame_count"] == 30
    for alert in got.alerts:
        assert validation_errors("alert.v1", json.loads(alert.value)) == []
