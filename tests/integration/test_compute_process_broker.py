"""The compute process through the real broker: a record that kills it ends as one faithful dead
letter, the records around it as findings, and the worker goes on."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence

import pytest
from kafka_helpers import collect, running

from worker.contract import ScanEvent, decode_headers, validation_errors
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.pipeline import Outcome
from worker.runtime import kafka as kafka_clients
from worker.runtime.compute_process import ProcessPipeline, Sources, run_pipeline
from worker.runtime.loop import Worker
from worker.runtime.publisher import event_headers
from worker.settings import Settings

pytestmark = pytest.mark.integration

DEADLY = b"DICM but this one crashes the decoder"


def crash_on_cue(events: Sequence[ScanEvent], sources: Sources) -> tuple[list[Outcome], float]:
    """Runs in the child: dies as a native decoder's segfault would on DEADLY."""
    if any(e.data == DEADLY for e in events):
        os._exit(139)
    return run_pipeline(events, sources)


@pytest.mark.internal_error_expected  # the child is killed on purpose
@pytest.mark.timeout(240)
def test_a_record_that_kills_the_compute_process_ends_as_one_faithful_dead_letter(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings.replace(compute_process=True)
    assert settings.bootstrap_servers
    worker = Worker(
        settings,
        settings.bootstrap_servers,
        ModelSet.load(),
        Metrics(),
        Health(),
        pipeline=ProcessPipeline(settings, target=crash_on_cue),
    )
    values = [encode_ct(ct_slice(1, 128)), DEADLY, encode_ct(ct_slice(2, 128))]
    sent: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {}
    with running(worker, "worker"):
        producer = kafka_clients.producer(settings.bootstrap_servers, settings)
        for value in values:  # one key: one partition, so one poll can hold all three
            event_id = str(uuid.uuid4())
            headers = event_headers(event_id, time.time(), "application/dicom")
            producer.send(settings.events_topic, key=b"study-1", value=value, headers=headers)
            sent[event_id] = (value, headers)
        producer.flush()
        producer.close()
        got = collect(settings, expected=len(values))
    # Counted by event: at-least-once replays what was not committed when the consumer was
    # replaced (membership.py: kafka-python stuck in a rebalance, seen a few times in a hundred
    # runs, once here), and a replay gives the same result again, never another.
    found_ids = {json.loads(f.value)["event_id"] for f in got.findings}
    assert found_ids == {i for i, (v, _) in sent.items() if v != DEADLY}
    assert got.dead_letters
    for dead in got.dead_letters:
        found = decode_headers(dead.headers)
        value, headers = sent[found["event-id"]]
        assert value == DEADLY and dead.value == DEADLY and dead.key == b"study-1"
        assert dead.headers[: len(headers)] == headers  # the originals first, unchanged
        assert found["scanstream.error.reason"] == "internal_error"
        assert "died on this event" in found["scanstream.error.detail"]
        assert validation_errors("dead-letter.v1", found) == []
    replays = worker.stats.consumed - len(values)
    assert replays >= 0 and 1 <= worker.stats.dead_letters <= 1 + replays


@pytest.mark.timeout(240)
def test_with_a_compute_process_the_worker_loads_no_models_itself(
    isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child loads the models and the worker's metrics show the child's: on a GPU, one CUDA
    context, not two. (The patch below reaches this process only, not the spawned child.)"""
    from worker.runtime import service

    def refuse(_: Settings) -> ModelSet:
        raise AssertionError("the worker process loaded models")

    monkeypatch.setattr(service, "load_models", refuse)
    settings = isolated_settings.replace(compute_process=True)
    assert settings.bootstrap_servers
    worker, metrics, _ = service.start_worker(settings, settings.bootstrap_servers)
    with running(worker, "worker"):
        producer = kafka_clients.producer(settings.bootstrap_servers, settings)
        headers = event_headers(str(uuid.uuid4()), time.time(), "application/dicom")
        producer.send(settings.events_topic, value=encode_ct(ct_slice(3, 128)), headers=headers)
        producer.flush()
        producer.close()
        got = collect(settings, expected=1)
    assert len(got.findings) == 1 and got.dead_letters == []
    assert isinstance(worker.pipeline, ProcessPipeline)
    shown = metrics.render().decode()
    for info in ModelSet.load().model_infos():
        assert f'name="{info["name"]}"' in shown and f'version="{info["version"]}"' in shown
