"""STOW-RS into the real gateway and the real broker: a 200 only for instances the broker has,
one event per instance, one study-complete record per study."""

from __future__ import annotations

import http.client
import json
import uuid

import pytest

from tests.kafka_helpers import at_least, read_topics
from worker.broker import free_port
from worker.contract import header, validation_errors
from worker.dicomweb import build_multipart_related
from worker.gateway.service import Gateway
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import InstanceHeader
from worker.settings import Settings

pytestmark = pytest.mark.integration


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
        want = {settings.events_topic: 3, settings.studies_topic: 1}
        got = read_topics(settings, list(want), at_least(want), timeout_s=60)
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
