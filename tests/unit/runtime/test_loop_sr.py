"""The worker with ``SCANSTREAM_SR_TOPIC`` on, against the fakes: each finding's SR goes out with
it, is refused or acknowledged with it, and an SR that cannot be built never holds it back."""

from __future__ import annotations

import io
import json
from typing import Any

import pydicom
from kafka import errors as kafka_errors

from tests.unit.runtime.test_loop import make_worker, models, record
from worker.inference import ModelSet
from worker.phantoms import ct_slice, encode_ct
from worker.settings import Settings
from worker.sr import sop_instance_uid_for

__all__ = ["models"]  # the module-scoped fixture, shared with test_loop
SR_ON = Settings(sr_topic="scans.sr")


def test_each_finding_goes_out_with_its_sr_keyed_and_labelled_like_it(models: ModelSet) -> None:
    good = encode_ct(ct_slice(11, 64))
    worker, consumer, producer, _ = make_worker(
        models, [[record(0, good), record(1, b"not dicom")]], settings=SR_ON
    )
    stats = worker.run(drain=True)
    [finding_msg] = producer.acked("scans.findings")
    [sr_msg] = producer.acked("scans.sr")
    finding = json.loads(finding_msg.value or b"")
    sr = pydicom.dcmread(io.BytesIO(sr_msg.value or b""))
    source = pydicom.dcmread(io.BytesIO(good), stop_before_pixels=True)
    assert sr.Modality == "SR" and sr.SOPInstanceUID == sop_instance_uid_for(finding["finding_id"])
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID  # the SR carries what the JSON finding leaves out
    headers = dict(sr_msg.headers)
    assert headers["content-type"] == b"application/dicom"
    assert headers["finding-id"] == finding["finding_id"].encode()
    assert headers["event-id"] == b"e0" and sr_msg.key == b"study"
    # A dead letter has no SR; the offsets move after both messages were acknowledged.
    assert (stats.findings, stats.dead_letters, stats.srs_not_built) == (1, 1, 0)
    assert consumer.committed_offsets[consumer.tp].offset == 2
    assert b'scanstream_sr_total{outcome="produced"} 1.0' in worker.metrics.render()


def test_without_the_sr_topic_no_sr_is_built(models: ModelSet) -> None:
    worker, _, producer, _ = make_worker(models, [[record(0, encode_ct(ct_slice(12, 64)))]])
    worker.run(drain=True)
    assert {s.topic for s in producer.sent} == {"scans.findings"}
    assert b'scanstream_sr_total{outcome="produced"} 0.0' in worker.metrics.render()


def test_a_refused_sr_makes_its_event_a_dead_letter_and_the_batch_goes_on(
    models: ModelSet,
) -> None:
    good = encode_ct(ct_slice(13, 64))
    refused: list[bytes] = []

    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        if topic == "scans.sr" and not refused:
            refused.append(value)
            return kafka_errors.MessageSizeTooLargeError("too big for the SR topic")
        return None

    worker, consumer, producer, _ = make_worker(
        models, [[record(0, good), record(1, good)]], fail, settings=SR_ON
    )
    stats = worker.run(drain=True)
    [dead] = producer.acked("scans.dlq")
    assert dead.value == good and dict(dead.headers)["scanstream.error.reason"] == b"result_refused"
    assert (stats.findings, stats.dead_letters) == (1, 1)
    # Record 1's finding and SR; record 0's finding was acknowledged before its SR was refused
    # (a stray one: the same finding id, so a replay replaces it downstream).
    assert len(producer.acked("scans.sr")) == 1
    assert consumer.committed_offsets[consumer.tp].offset == 2


def test_an_sr_that_cannot_be_built_does_not_hold_its_finding_back(models: ModelSet) -> None:
    dataset = pydicom.dcmread(io.BytesIO(encode_ct(ct_slice(14, 64))))
    del dataset.SeriesInstanceUID  # the SR could not say which series it belongs to
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    worker, consumer, producer, _ = make_worker(
        models, [[record(0, out.getvalue())]], settings=SR_ON
    )
    stats = worker.run(drain=True)
    assert len(producer.acked("scans.findings")) == 1 and not producer.acked("scans.sr")
    assert (stats.findings, stats.srs_not_built) == (1, 1)
    assert b'scanstream_sr_total{outcome="not_built"} 1.0' in worker.metrics.render()
    assert consumer.committed_offsets[consumer.tp].offset == 1


def test_in_exactly_once_mode_the_sr_is_in_the_findings_transaction(models: ModelSet) -> None:
    settings = Settings(sr_topic="scans.sr", delivery="exactly-once")
    worker, consumer, producer, log = make_worker(
        models, [[record(0, encode_ct(ct_slice(15, 64)))]], settings=settings
    )
    worker.run(max_events=1)  # (the fake consumer learns no offsets from a transaction)
    begin, commit = log.index("begin_transaction"), log.index("commit_transaction")
    sends = [i for i, entry in enumerate(log) if entry.startswith("send scans.sr")]
    assert sends and all(begin < i < commit for i in sends)
    assert producer.txn_offsets[consumer.tp].offset == 1 and "commit_async" not in log
