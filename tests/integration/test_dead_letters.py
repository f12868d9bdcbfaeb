"""A mixed stream through the real broker: events in = findings + dead letters, bytes intact."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from kafka_helpers import collect, worker_thread

from worker.contract import decode_headers, validation_errors
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers
from worker.settings import Settings

pytestmark = pytest.mark.integration


def test_mixed_stream_ends_in_findings_and_faithful_dead_letters(
    isolated_settings: Settings, pydicom_files: Path, tmp_path: Path
) -> None:
    # 300 kB limit: a 512x512 CT phantom (512 kB) is "too large", the small samples are not.
    settings = isolated_settings.replace(
        max_message_bytes=300_000, reference_allow=(tmp_path.as_uri() + "/",)
    )
    assert settings.bootstrap_servers
    good_file = tmp_path / "good.dcm"
    good_file.write_bytes(encode_ct(ct_slice(3, 128), study="ref", instance=1))
    truncated = (pydicom_files / "CT_small.dcm").read_bytes()[:20_000]
    cases: list[tuple[str, bytes, str, str | None]] = [
        ("good-ct", (pydicom_files / "CT_small.dcm").read_bytes(), "application/dicom", None),
        ("good-mr", (pydicom_files / "MR_small_RLE.dcm").read_bytes(), "application/dicom", None),
        (
            "good-lesion",
            encode_ct(ct_slice(9, 128, Lesion(60, 50, 8, 200))),
            "application/dicom",
            None,
        ),
        ("not-dicom", b"%PDF-1.4 this is not an image" * 10, "application/dicom", "not_dicom"),
        ("truncated", truncated, "application/dicom", "truncated"),
        ("oversize", encode_ct(ct_slice(4, 512)), "application/dicom", "too_large"),
        (
            "lossy-jpeg",
            (pydicom_files / "JPEG-lossy.dcm").read_bytes(),
            "application/dicom",
            "decode_error",
        ),
        (
            "report",
            (pydicom_files / "test-SR.dcm").read_bytes(),
            "application/dicom",
            "no_pixel_data",
        ),
        (
            "missing-ref",
            json.dumps({"uri": (tmp_path / "nope.dcm").as_uri()}).encode(),
            "application/json",
            "fetch_error",
        ),
        ("bad-ref", b'{"url": "oops"}', "application/json", "schema_error"),
        ("good-ref", json.dumps({"uri": good_file.as_uri()}).encode(), "application/json", None),
    ]
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    sent: dict[str, tuple[str, bytes, list[tuple[str, bytes]], str | None]] = {}
    for name, value, ctype, reason in cases:
        event_id = f"{name}-{uuid.uuid4().hex[:6]}"
        headers = [*event_headers(event_id, time.time(), ctype), ("x-origin", b"scanner-7")]
        producer.send(
            settings.events_topic, key=f"study-{name}".encode(), value=value, headers=headers
        )
        sent[event_id] = (name, value, headers, reason)
    producer.flush()
    producer.close()
    with worker_thread(settings):
        got = collect(settings, expected=len(cases))

    findings = {json.loads(r.value)["event_id"]: r for r in got.findings}
    dead = {decode_headers(r.headers)["event-id"]: r for r in got.dead_letters}
    print(
        f"sent={len(sent)} findings={len(findings)} dead_letters={len(dead)} "
        f"duplicates={len(got.findings) + len(got.dead_letters) - len(findings) - len(dead)}"
    )
    assert len(got.findings) + len(got.dead_letters) == len(sent)
    assert set(findings) | set(dead) == set(sent) and not set(findings) & set(dead)
    for event_id, (name, value, headers, reason) in sent.items():
        if reason is None:
            assert event_id in findings, name
            assert validation_errors("finding.v1", json.loads(findings[event_id].value)) == []
            continue
        record = dead[event_id]
        got_headers = decode_headers(record.headers)
        assert got_headers["scanstream.error.reason"] == reason, (name, got_headers)
        assert record.value == value  # byte for byte
        assert record.key == f"study-{name}".encode()
        assert record.headers[: len(headers)] == headers  # originals first, unchanged
        assert got_headers["scanstream.error.topic"] == settings.events_topic
        assert validation_errors("dead-letter.v1", got_headers) == []
    for alert in got.alerts:
        assert validation_errors("alert.v1", json.loads(alert.value)) == []
