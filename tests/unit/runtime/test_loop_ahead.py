"""With a compute process, a poll of more than one chunk takes the next poll while its last
chunk computes (``Worker._handle``): the records of both still end in one finding each, in
order, and a rebalance before that poll undoes it, as the loop's own poll would."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tests.unit.runtime.fakes import TOPIC, FakeConsumer, FakeProducer, Record
from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.pipeline import Outcome, Pipeline
from worker.runtime.loop import Worker
from worker.settings import Settings


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


class OneAtATime:
    """The pipeline as a compute process runs it: one chunk at a time, whichever of the
    worker's two compute threads hands it over."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline, self.lock = pipeline, threading.Lock()

    def process(self, events: Sequence[ScanEvent], sources: Any = None) -> list[Outcome]:
        with self.lock:
            return self.pipeline.process(events, sources)


def _worker(
    models: ModelSet, batches: list[list[Record]], compute_process: bool = True
) -> tuple[Worker, FakeConsumer, FakeProducer, list[str]]:
    log: list[str] = []
    consumer, producer = FakeConsumer(log, batches), FakeProducer(log)
    # A target below any event's compute: every event is a chunk; a poll of three is full.
    # A commit for every chunk: these tests pin the order of polls, sends and seeks; the commit
    # interval has tests of its own (test_loop.py).
    settings = Settings(
        chunk_target_ms=1e-6,
        compute_process=compute_process,
        max_poll_records=3,
        commit_interval_ms=0,
    )
    pipeline = OneAtATime(Pipeline(models, settings))
    worker = Worker(
        settings,
        "fake:9092",
        models,
        Metrics(),
        Health(),
        consumer=consumer,
        producer=producer,
        pipeline=pipeline,  # type: ignore[arg-type]
    )
    consumer.on_poll = lambda: log.append("poll")
    return worker, consumer, producer, log


def _record(offset: int, value: bytes) -> Record:
    headers = [("content-type", b"application/dicom"), ("event-id", f"e{offset}".encode())]
    return Record(TOPIC, 0, offset, 1_700_000_000_000, b"study", value, headers)


def _batches(sizes: Sequence[int]) -> list[list[Record]]:
    image = encode_ct(ct_slice(3, 64))
    offsets = iter(range(sum(sizes)))
    return [[_record(next(offsets), image) for _ in range(size)] for size in sizes]


def _finding_offsets(producer: FakeProducer) -> list[int]:
    return [json.loads(s.value or b"")["source"]["offset"] for s in producer.sent]


def test_the_next_poll_is_taken_before_the_last_chunk_is_sent(models: ModelSet) -> None:
    worker, consumer, producer, log = _worker(models, _batches([3, 3, 2]))
    stats = worker.run(drain=True)
    assert _finding_offsets(producer) == list(range(8))  # each once, in order
    assert stats.findings == 8 and consumer.committed_offsets[consumer.tp].offset == 8
    sends = [i for i, entry in enumerate(log) if entry.startswith("send")]
    polls = [i for i, entry in enumerate(log) if entry == "poll"]
    # The second and third polls come before the finding of the poll before's last event.
    assert polls[1] < sends[2] and polls[2] < sends[5]


def test_below_saturation_the_loop_polls_after_the_last_chunk(models: ModelSet) -> None:
    # Two polls of two (not full: no backlog): the poll ahead would only wait for new events.
    worker, _, producer, log = _worker(models, _batches([2, 2]))
    worker.run(drain=True)
    assert _finding_offsets(producer) == list(range(4))
    sends = [i for i, entry in enumerate(log) if entry.startswith("send")]
    polls = [i for i, entry in enumerate(log) if entry == "poll"]
    assert sends[1] < polls[1]


def test_without_a_compute_process_the_loop_polls_after_the_last_chunk(
    models: ModelSet,
) -> None:
    worker, _, producer, log = _worker(models, _batches([3, 3]), compute_process=False)
    worker.run(drain=True)
    assert _finding_offsets(producer) == list(range(6))
    sends = [i for i, entry in enumerate(log) if entry.startswith("send")]
    polls = [i for i, entry in enumerate(log) if entry == "poll"]
    assert sends[2] < polls[1]


def test_a_rebalance_before_the_poll_ahead_undoes_it(models: ModelSet) -> None:
    # The partition is revoked and given back inside the poll taken ahead: kafka-python may
    # then have restarted it from the committed offset, so that poll's records are sought back.
    # The loop's next poll, with that chunk held, is undone too (test_loop.py: a rebalance
    # while a chunk waits); the fake consumer returns the sought records again twice.
    batches = _batches([3, 3])
    worker, consumer, producer, log = _worker(models, [*batches, batches[1], batches[1]])
    polls = [0]

    def on_poll() -> None:
        polls[0] += 1
        log.append("poll")
        if polls[0] == 2:
            assert consumer.listener is not None
            consumer.listener.on_partitions_revoked({consumer.tp})
            consumer.listener.on_partitions_assigned({consumer.tp})

    consumer.on_poll = on_poll
    stats = worker.run(drain=True)
    assert _finding_offsets(producer) == list(range(6))  # each once
    assert stats.findings == 6 and consumer.committed_offsets[consumer.tp].offset == 6
    second = [i for i, entry in enumerate(log) if entry == "poll"][1]
    assert log[second + 1] == "seek 3"  # the poll ahead, undone before anything was sent
    assert log[second + 2].startswith("send")  # then the last chunk of the first poll
