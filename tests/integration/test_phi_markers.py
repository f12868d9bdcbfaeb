"""Issue 12 on the real broker: log lines and dead-letter details never contain values taken
from inside the DICOM other than UIDs.

Instances whose PatientName, PatientID, birth date, institution, physicians, accession number,
descriptions, comments, a nested sequence item and a private element carry marker strings
(:mod:`phi_markers`) go through the worker, in this process, with every logger at DEBUG. Each
becomes a finding (one with an alert) or a dead letter for a different reason. No marker (nor
the birth date in either form, nor a marker's unkeyed hash) may appear in any log line (plain
and JSON formatted, tracebacks included), in the Prometheus exposition or the health text, in
any finding or alert (key, value, headers), or in any dead letter's key and headers. The dead
letter's value is the original DICOM by design: the markers must be there, which proves they
reached the worker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kafka_helpers import collect
from phi_markers import MAX_MESSAGE_BYTES, MAX_PIXELS, Case, LogCapture, carries_markers, cases
from phi_markers import leaks as leaks_in

from worker.contract import decode_headers
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers
from worker.runtime.service import start_worker
from worker.settings import AlertRule, Secret, Settings

pytestmark = pytest.mark.integration


def _leaks(key: bytes | None, headers: list[tuple[str, bytes | None]]) -> list[object]:
    found: list[object] = [("key", key)] if leaks_in(key) else []
    return found + [(k, v) for k, v in headers if leaks_in(k) or leaks_in(v)]


def test_no_dicom_value_reaches_logs_metrics_or_results(isolated_settings: Settings) -> None:
    settings = isolated_settings.replace(
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_pixels=MAX_PIXELS,
        alert_rules=(AlertRule("lesion", 0.0),),
        pseudonym_key=Secret("k3y"),
    )
    assert settings.bootstrap_servers
    sent: dict[str, Case] = {}
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    for case in cases():
        event_id = f"phi-{uuid.uuid4().hex[:8]}"
        headers = event_headers(event_id, time.time(), "application/dicom")
        producer.send(
            settings.events_topic,
            key=f"study-{len(sent)}".encode(),
            value=case.data,
            headers=headers,
        )
        sent[event_id] = case
    producer.flush()
    producer.close()

    with LogCapture() as logs:
        worker, metrics, health = start_worker(settings, settings.bootstrap_servers)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            got = collect(settings, expected=len(sent), timeout_s=90, settle_s=1.0)
        finally:
            worker.stop()
            thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"
    exposition = metrics.render()
    health_text = repr(health.status())

    # Nothing vacuous: every case ended as planned, and the worker logged every result.
    findings = {json.loads(r.value)["event_id"]: r for r in got.findings}
    dead = {decode_headers(r.headers)["event-id"]: r for r in got.dead_letters}
    assert len(got.findings) + len(got.dead_letters) == len(sent)
    assert {e: c.expected for e, c in sent.items()} == {
        **{e: "finding" for e in findings},
        **{e: decode_headers(r.headers)["scanstream.error.reason"] for e, r in dead.items()},
    }
    expected_findings = [e for e, c in sent.items() if c.expected == "finding"]
    assert len(findings) == len(expected_findings) >= 3 and len(dead) >= 13
    alerted = {json.loads(a.value)["event_id"] for a in got.alerts}
    assert {e for e, c in sent.items() if c.alert} <= alerted
    assert len(logs.worker_lines()) >= 2 * len(dead)  # a dead_letter line each, two formats
    assert b"scanstream_events_total" in exposition

    # The markers reached the worker: they are in the dead letters' values, as sent.
    for event_id, record in dead.items():
        assert record.value == sent[event_id].data
        assert carries_markers(sent[event_id], record.value), sent[event_id].name

    # ... and nowhere else.
    assert [line for line in logs.lines if leaks_in(line)] == []
    assert leaks_in(exposition) == []
    assert leaks_in(health_text) == []
    for record in [*got.findings, *got.alerts]:
        assert leaks_in(record.value) == [], record.value
        assert _leaks(record.key, record.headers) == []
    for event_id, record in dead.items():
        assert _leaks(record.key, record.headers) == [], sent[event_id].name
