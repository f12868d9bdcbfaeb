"""The PACS goes away during an export, for real: ``scanstream export`` (its own process) sends
the SRs of 100 findings to a real Orthanc by STOW-RS; Orthanc is killed for 20 s or more in
the middle and started again on the same storage. All 100 arrive, once each by SOP Instance
UID; the worker's findings never stall meanwhile (the second half of the events is published
and becomes findings and SRs while Orthanc is down); the exporter's ``/healthz`` says the
destination is down; and one SR record that Orthanc refuses for good becomes one
``export_rejected`` dead letter without holding back the SRs after it.

What Orthanc 1.10.1 refuses for good: over STOW-RS, an instance without a StudyInstanceUID
(HTTP 400, FailureReason 0xC000). Over C-STORE it refuses nothing for good (0xA700 for every
storage failure, and a Lua filter's refusal is answered as Success), and the worker never builds
such an SR; so the refused record is put on the SR topic by the test, between the two halves.
(C-STORE through an outage is tested in tests/integration/test_export_destinations.py.)"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from export_helpers import phantom, publish, stored_srs, wait_for
from kafka_helpers import at_least, read_topics, worker_thread
from orthanc import running_orthanc

from worker.broker import free_port
from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.pipeline import analyze
from worker.runtime import kafka as kafka_clients
from worker.settings import Secret, Settings
from worker.sr import build_sr, sop_instance_uid_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

GOOD, OUTAGE_S = 100, 20.0
REFUSED_PATIENT = "REFUSE-ME"


def refused_record(settings: Settings) -> bytes:
    """An SR (of a patient the test names) without its StudyInstanceUID, on the SR topic."""
    source = pydicom.dcmread(io.BytesIO(phantom(1000, PatientID=REFUSED_PATIENT)))
    finding = analyze(ScanEvent("refused", 0.0, data=phantom(1000)), ModelSet.load(), Settings())
    sr = build_sr(source, finding)
    del sr.StudyInstanceUID
    out = io.BytesIO()
    sr.save_as(out, enforce_file_format=True)
    assert settings.bootstrap_servers and settings.sr_topic
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    try:
        producer.send(settings.sr_topic, key=b"refused", value=out.getvalue()).get(timeout=30)
    finally:
        producer.close()
    return out.getvalue()


def healthz(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def exporter_process(settings: Settings, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")},
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
        "SCANSTREAM_SR_TOPIC": str(settings.sr_topic),
        "SCANSTREAM_DLQ_TOPIC": settings.dlq_topic,
        "SCANSTREAM_EXPORT_TO": str(settings.export_to),
        "SCANSTREAM_EXPORT_AUTH": settings.export_auth.reveal(),
        "SCANSTREAM_EXPORT_GROUP_ID": f"{settings.group_id}-export",
        "SCANSTREAM_EXPORT_TIMEOUT_S": "5",
        "SCANSTREAM_EXPORT_BACKOFF_MAX_S": "2",
        "SCANSTREAM_METRICS_PORT": str(metrics_port),
    }
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "export"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def diagnosis(settings: Settings, port: int, tmp_path: Path) -> str:
    """What a failed wait needs to say: SRs produced so far, the exporter's health and log."""
    parts = []
    try:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
        try:
            tps = [TopicPartition(str(settings.sr_topic), p) for p in range(3)]
            parts.append(f"SR records on the topic: {sum(consumer.end_offsets(tps).values())}")
        finally:
            consumer.close()
    except Exception as exc:  # noqa: BLE001 - a diagnosis never hides the failure
        parts.append(f"SR count unknown ({exc!r})")
    try:
        parts.append(f"exporter /healthz: {healthz(port)}")
    except OSError as exc:
        parts.append(f"exporter /healthz: {exc!r}")
    log = (tmp_path / "export.log").read_text(errors="replace")[-2000:]
    parts.append(f"exporter log: ...{log}")
    return "; ".join(parts)


def test_a_pacs_outage_loses_nothing_and_stalls_nothing(
    tmp_path: Path, isolated_settings: Settings
) -> None:
    with running_orthanc(tmp_path) as orthanc:
        user, password = orthanc.auth
        settings = isolated_settings.replace(
            sr_topic=f"{isolated_settings.group_id}.sr",
            export_to=orthanc.dicomweb.rstrip("/"),
            export_auth=Secret(f"basic {user}:{password}"),
        )
        assert settings.bootstrap_servers and settings.sr_topic
        kafka_clients.ensure_topics(settings.bootstrap_servers, settings)
        first = [phantom(i) for i in range(GOOD // 2)]
        second = [phantom(i) for i in range(GOOD // 2, GOOD)]
        port = free_port()
        exporter = exporter_process(settings, port, tmp_path / "export.log")
        try:
            with worker_thread(settings):
                publish(settings, first)
                try:
                    wait_for(lambda: len(stored_srs(orthanc)) >= 20, 120, "20 SRs before outage")
                except AssertionError as exc:  # say which side stalled (seen twice, under load)
                    raise AssertionError(f"{exc}; {diagnosis(settings, port, tmp_path)}") from exc
                refused = refused_record(settings)  # before the later SRs of its partition
                orthanc.stop(kill=True)
                down_at = time.monotonic()
                publish(settings, second)
                # The worker goes on meanwhile: every finding and SR is produced, PACS or not.
                # Orthanc is started again only after they are all read, so however long that
                # takes on a slow machine, every one of them came while the PACS was down.
                topics = read_topics(
                    settings,
                    [settings.findings_topic, settings.sr_topic],
                    at_least({settings.findings_topic: GOOD, settings.sr_topic: GOOD + 1}),
                    timeout_s=120,
                    settle_s=0,
                )
                assert len(topics[settings.findings_topic]) == GOOD
                assert len(topics[settings.sr_topic]) >= GOOD + 1
                wait_for(lambda: "unreachable" in healthz(port)[1], 10, "/healthz to say so")
                status, body = healthz(port)
                assert status == 200, body
                assert body.startswith(f"waiting: export destination {settings.export_to} ")
                # The outage lasts at least OUTAGE_S, and ends only here.
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
                orthanc.start()
                wait_for(lambda: len(stored_srs(orthanc)) >= GOOD, 120, "every SR after it")
                wait_for(lambda: healthz(port) == (200, "ok\n"), 30, "/healthz to be ok again")
        finally:
            exporter.send_signal(signal.SIGTERM)
            code = exporter.wait(timeout=60)
        log = (tmp_path / "export.log").read_text(errors="replace")
        assert code == 0, log[-3000:]

        findings = [json.loads(r.value) for r in topics[settings.findings_topic]]
        expected = {sop_instance_uid_for(f["finding_id"]) for f in findings}
        stored = stored_srs(orthanc)
        assert len(stored) == GOOD and set(stored) == expected  # each once, none missing
        dead = read_topics(
            settings, [settings.dlq_topic], at_least({settings.dlq_topic: 1}), settle_s=2
        )[settings.dlq_topic]
        assert len(dead) == 1
        headers = dict(dead[0].headers)
        assert headers["scanstream.error.reason"] == b"export_rejected"
        assert headers["scanstream.error.topic"] == settings.sr_topic.encode()
        assert dead[0].value == refused and dead[0].key == b"refused"  # the record, as it was
        assert b"400" in (headers["scanstream.error.detail"] or b"")
        assert REFUSED_PATIENT not in log  # no patient ID in the exporter's logs
