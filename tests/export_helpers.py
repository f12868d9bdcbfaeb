"""Helpers for the SR export tests: an exporter thread, instances to send, and what a real
Orthanc holds (found through its own REST API)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pydicom
from kafka_helpers import running
from orthanc import Orthanc

from worker.export.destinations import open_destination
from worker.export.loop import Exporter
from worker.export.metrics import ExportMetrics
from worker.metrics import Health
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import publish_bytes
from worker.settings import Settings

ALGORITHM_NAME, LESION, PRESENT = "111001", "52988006", "52101004"  # DCM, SCT, SCT


@contextmanager
def exporter_thread(settings: Settings) -> Iterator[Exporter]:
    """``scanstream export``'s loop on a thread, with these settings; stopped at the end."""
    assert settings.bootstrap_servers and settings.sr_topic
    kafka_clients.ensure_topics(
        settings.bootstrap_servers, settings, only=(settings.sr_topic, settings.dlq_topic)
    )
    destination = open_destination(settings)
    exporter = Exporter(
        settings,
        settings.bootstrap_servers,
        destination,
        ExportMetrics(destination.name),
        Health(),
    )
    exporter.backoff_first_s = 0.2
    try:
        with running(exporter, "exporter"):
            yield exporter
    finally:
        destination.close()


def phantom(seed: int, **attributes: Any) -> bytes:
    """CT phantom slice ``seed`` (its own SOP Instance UID; 25 slices a study), with
    ``attributes`` set (e.g. PatientID)."""
    data = encode_ct(ct_slice(seed, 64), study=f"export-{seed // 25}", instance=seed + 1)
    if not attributes:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    for name, value in attributes.items():
        setattr(dataset, name, value)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def publish(settings: Settings, instances: list[bytes]) -> None:
    """One inline event per instance, acknowledged before this returns."""
    assert settings.bootstrap_servers
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    try:
        for data in instances:
            publish_bytes(producer, settings, data)
        producer.flush()
    finally:
        producer.close()


def stored_srs(orthanc: Orthanc) -> dict[str, str]:
    """SOP Instance UID -> Orthanc ID of every SR instance Orthanc holds."""
    query = {"Level": "Instance", "Query": {"Modality": "SR"}, "Expand": True}
    found = orthanc.json("POST", "/tools/find", json.dumps(query).encode())
    return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in found}


def study_of(orthanc: Orthanc, instance_id: str) -> str:
    """The StudyInstanceUID of the study Orthanc filed an instance under."""
    series = orthanc.json("GET", f"/instances/{instance_id}")["ParentSeries"]
    study = orthanc.json("GET", f"/series/{series}")["ParentStudy"]
    uid: str = orthanc.json("GET", f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    return uid


def lesion_calls(sr: pydicom.Dataset) -> dict[str, bool]:
    """Per algorithm named in the SR: whether its Lesion evaluation is Present (read with
    pydicom alone: each measurement group holds one "Algorithm Name" TEXT, one "Lesion" CODE)."""
    calls: dict[str, bool] = {}

    def walk(items: Any) -> None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            names = [c for c in children if _concept(c) == ALGORITHM_NAME]
            lesions = [c for c in children if _concept(c) == LESION and c.ValueType == "CODE"]
            if names and lesions:
                present = lesions[0].ConceptCodeSequence[0].CodeValue == PRESENT
                calls[str(names[0].TextValue)] = present
            walk(children)

    walk(sr.ContentSequence)
    return calls


def _concept(item: Any) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)
