"""STOW-RS into the real gateway and the real broker: a 200 only for instances the broker has,
one event per instance, one study-complete record per study."""

from __future__ import annotations

import http.client
import json
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from worker.broker import free_port
from worker.contract import header, validation_errors
from worker.dicomweb import build_multipart_related
from worker.gateway.durable import InstanceHeader
from worker.gateway.service import Gateway
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.security import client_security
from worker.settings import Settings

pytestmark = pytest.mark.integration


def read_topics(
    settings: Settings, want: dict[str, int], timeout_s: float = 60.0, settle_s: float = 2.0
) -> dict[str, list[object]]:
    """Every record of the topics in ``want`` from the start, until each has its number, then
    ``settle_s`` longer so that duplicates would show."""
    assert settings.bootstrap_servers
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.max_message_bytes + (1 << 20),
        **client_security(settings),
    )
    out: dict[str, list[object]] = {topic: [] for topic in want}
    try:
        tps = [
            TopicPartition(t, p)
            for t in want
            for p in sorted(consumer.partitions_for_topic(t) or {0})
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline, settle_until = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                out[tp.topic].extend(records)
            if all(len(out[t]) >= n for t, n in want.items()):
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return out


def test_a_stowed_study_becomes_three_events_and_one_study_record(
    kafka_bootstrap: str, isolated_settings: Settings
) -> None:
    settings = isolated_settings.replace(
        gateway_http_port=free_port(), gateway_port=free_port(), study_quiet_s=1.0
    )
    kafka_clients.ensure_topics(kafka_bootstrap, settings, also=(settings.studies_topic,))
    study = f"s-{uuid.uuid4().hex[:8]}"
    parts = [encode_ct(ct_slice(i, 64), study=study, instance=i) for i in (1, 2, 3)]
    headers = [InstanceHeader.read(p) for p in parts]
    study_uid = headers[0].study_uid
    ctype, body = build_multipart_related(parts)

    gateway = Gateway(settings, kafka_bootstrap)
    try:
        gateway.start()
        conn = http.client.HTTPConnection("127.0.0.1", settings.gateway_http_port, timeout=60)
        try:
            conn.request("POST", f"/dicom-web/studies/{study_uid}", body, {"Content-Type": ctype})
            reply = conn.getresponse()
            status, reply_type, doc = reply.status, reply.getheader("Content-Type"), reply.read()
        finally:
            conn.close()
        assert status == 200, doc
        assert reply_type == "application/dicom+json"
        dataset = json.loads(doc)
        assert "00081198" not in dataset
        items = dataset["00081199"]["Value"]
        assert [i["00081155"]["Value"][0] for i in items] == [h.sop_uid for h in headers]
        assert {i["00081150"]["Value"][0] for i in items} == {headers[0].sop_class_uid}

        # The 200 came after the acks: the events are there at once, the study record after
        # the quiet period.
        got = read_topics(settings, {settings.events_topic: 3, settings.studies_topic: 1})
    finally:
        gateway.stop()

    events = got[settings.events_topic]
    assert len(events) == 3
    assert {e.key for e in events} == {study_uid.encode()}
    assert sorted(e.value for e in events) == sorted(parts)
    assert all(header(e.headers, "content-type") == b"application/dicom" for e in events)
    event_ids = {header(e.headers, "event-id") for e in events}

    (record,) = got[settings.studies_topic]
    assert record.key == study_uid.encode()
    assert header(record.headers, "schema") == b"study-complete.v1"
    study_doc = json.loads(record.value)
    assert validation_errors("study-complete.v1", study_doc) == []
    assert study_doc["study_instance_uid"] == study_uid
    assert (study_doc["revision"], study_doc["instance_count"]) == (1, 3)
    listed = study_doc["instances"]
    assert sorted(i["sop_instance_uid"] for i in listed) == sorted(h.sop_uid for h in headers)
    assert {i["event_id"].encode() for i in listed} == event_ids
