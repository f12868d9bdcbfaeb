"""`scanstream analyze` over every file of pydicom's test data: one line each, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.contract import validation_errors
from worker.pipeline import OFFLINE_OMITS

NO_PIXELS = [
    "rtplan.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "reportsi.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "dicomdirtests/DICOMDIR",
]


def test_analyze_every_pydicom_file(pydicom_files: Path) -> None:
    files = sorted(str(p) for p in pydicom_files.rglob("*") if p.is_file())
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "analyze", str(pydicom_files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    paths = [d.get("path") or d["event_id"] for d in lines]
    assert sorted(paths) == files  # exactly one line per file
    by_name = {
        str(Path(p).relative_to(pydicom_files)): d for p, d in zip(paths, lines, strict=True)
    }
    assert by_name["JPEG-lossy.dcm"]["rejected"] == "decode_error"
    assert by_name["JPEG2000-embedded-sequence-delimiter.dcm"]["rejected"] == "decode_error"
    for name in NO_PIXELS:
        assert by_name[name]["rejected"] == "no_pixel_data", name
    findings = [d for d in lines if "rejected" not in d]
    assert len(findings) > 80  # every decodable image became a finding
    for finding in findings:
        # Offline: no latency and no send time (a file's age is neither), and it says so.
        assert finding["offline"] is True
        assert not set(OFFLINE_OMITS) & set(finding)
        errors = validation_errors(
            "finding.v1", {k: v for k, v in finding.items() if k != "offline"}
        )
        assert sorted(errors) == sorted(
            f'<root>: "{k}" is a required property' for k in OFFLINE_OMITS
        )


def test_unreadable_path_exits_non_zero(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "analyze", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "unreadable"
