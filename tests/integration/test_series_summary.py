"""``scanstream summarize`` against the real broker: real findings (the pipeline on phantom CT
slices) published to an isolated findings topic, and a gateway study-complete record; one
summary per series, by the quiet period and by the study-complete record (before the quiet
period ends), each valid series-summary.v1; a summarizer stopped with a series still open
leaves it to the next one, which summarises it and nothing else again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.kafka_helpers import read_topics, running
from worker.contract import ScanEvent, validation_errors
from worker.gateway.studies import StudyTracker
from worker.inference import ModelSet
from worker.phantoms import ct_slice, deterministic_uid, encode_ct
from worker.pipeline import Pipeline
from worker.runtime import kafka as kafka_clients
from worker.series.service import Summarizer
from worker.settings import Settings

pytestmark = pytest.mark.integration
# Long enough that the study-complete record is read (and its summaries produced) well within
# it on a loaded machine; which trigger ended each series is then told by its summary's fields.
QUIET_S = 15.0


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(ModelSet.load(), Settings())


def findings_of(pipeline: Pipeline, study: str, series: int, count: int) -> list[dict[str, Any]]:
    """Real finding.v1 documents of ``count`` 96x96 phantom slices of one series."""
    events = [
        ScanEvent(
            f"{study}-{series}-{i}",
            time.time(),
            data=encode_ct(ct_slice(seed=100 * series + i, size=96), study, series, i + 1),
        )
        for i in range(count)
    ]
    outcomes = pipeline.process(events)
    assert all(o.finding is not None for o in outcomes), [o.rejection for o in outcomes]
    return [o.finding for o in outcomes if o.finding is not None]


def publish(settings: Settings, topic: str, documents: list[dict[str, Any]]) -> None:
    assert settings.bootstrap_servers
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    try:
        for doc in documents:
            producer.send(
                topic,
                key=doc["study_instance_uid"].encode(),
                value=json.dumps(doc).encode(),
                headers=[("content-type", b"application/json")],
            ).get(timeout=30)
    finally:
        producer.close()


def study_complete(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's record for the study of ``findings``, by the gateway's own builder."""
    now = [0.0]
    tracker = StudyTracker(quiet_s=1.0, clock=lambda: now[0])
    for f in findings:
        tracker.note(
            f["study_instance_uid"],
            f["series_instance_uid"],
            f["sop_instance_uid"],
            "1.2.840.10008.5.1.4.1.1.2",
            f["event_id"],
        )
    now[0] = 1.0
    [record] = tracker.due()
    assert validation_errors("study-complete.v1", record) == []
    return record


@contextmanager
def summarizer_thread(settings: Settings) -> Iterator[Summarizer]:
    assert settings.bootstrap_servers
    with running(Summarizer(settings, settings.bootstrap_servers), "summarizer") as summarizer:
        yield summarizer


def summaries(settings: Settings, until: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    out = read_topics(
        settings,
        [settings.series_topic],
        lambda got: until([json.loads(r.value) for r in got[settings.series_topic]]),
        timeout_s=90,
        settle_s=3.0,  # a duplicate would follow within the settle time
    )
    docs = [json.loads(r.value) for r in out[settings.series_topic]]
    for record, doc in zip(out[settings.series_topic], docs, strict=True):
        assert validation_errors("series-summary.v1", doc) == []
        assert record.key == doc["study_instance_uid"].encode()
        assert ("schema", b"series-summary.v1") in record.headers
    return docs


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_one_summary_per_series_by_quiet_and_by_study_complete(
    isolated_settings: Settings, pipeline: Pipeline
) -> None:
    settings = isolated_settings.replace(series_quiet_s=QUIET_S)
    assert settings.bootstrap_servers
    kafka_clients.ensure_topics(
        settings.bootstrap_servers,
        settings,
        only=(settings.findings_topic, settings.studies_topic, settings.series_topic),
    )
    quiet = [f for s in (1, 2) for f in findings_of(pipeline, "series-quiet", s, 2)]
    complete = [f for s in (1, 2) for f in findings_of(pipeline, "series-complete", s, 3)]
    late = findings_of(pipeline, "series-restart", 1, 2)

    with summarizer_thread(settings) as summarizer:
        wait_for(summarizer.health.ready, 60, "the summarizer to join its group")
        publish(settings, settings.findings_topic, quiet + complete)
        publish(settings, settings.studies_topic, [study_complete(complete)])
        # Both series of the announced study are summarised by the record, before the quiet
        # period could have ended them: their summaries say trigger "study_complete" at
        # revision 1 (checked below), which a series the quiet period ended first cannot have.
        docs = summaries(settings, lambda got: len(got) >= 4)

        # A series still open when the summarizer stops: held, so the next one summarises it.
        publish(settings, settings.findings_topic, late)
        wait_for(lambda: summarizer.tracker.open_series() == 1, 30, "the late series to open")
    assert summarizer.produced == 4

    by_series = {(d["study_instance_uid"], d["series_instance_uid"]): d for d in docs}
    assert len(docs) == len(by_series) == 4  # one per series
    expectations = [("series-quiet", "quiet", 2), ("series-complete", "study_complete", 3)]
    for study, trigger, per_series in expectations:
        for s in (1, 2):
            doc = by_series[(deterministic_uid(study), deterministic_uid(study, s))]
            assert (doc["trigger"], doc["revision"], doc["instance_count"]) == (
                trigger,
                1,
                per_series,
            )
            assert doc["instances_expected"] == (
                per_series if trigger == "study_complete" else None
            )
            assert {m["frames_analysed"] for m in doc["models"]} == {per_series}
            names = {c["model"] for f in quiet + complete for c in f["classifications"]}
            assert {m["model"] for m in doc["models"]} == names

    with summarizer_thread(settings):
        after = summaries(settings, lambda got: len(got) >= 5)
    assert len(after) == 5  # the late series once; nothing summarised before came again
    restarted = after[-1]
    assert restarted["series_instance_uid"] == deterministic_uid("series-restart", 1)
    assert (restarted["instance_count"], restarted["trigger"]) == (2, "quiet")
