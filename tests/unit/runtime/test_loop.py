"""The consumer loop against the fakes of ``fakes.py``: every record ends in one result,
acknowledged results are never sent again, commits come after the acknowledgements, and no
record can make the loop replay its batch for ever."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from kafka import errors as kafka_errors

from tests.unit.runtime.fakes import (
    TOPIC,
    FakeConsumer,
    FakeProducer,
    Record,
    worker_producer_options,
)
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.loop import Worker
from worker.settings import Settings


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


def record(offset: int, value: bytes | None, **kw: Any) -> Record:
    headers = kw.pop(
        "headers", [("content-type", b"application/dicom"), ("event-id", f"e{offset}".encode())]
    )
    return Record(TOPIC, 0, offset, 1_700_000_000_000, kw.pop("key", b"study"), value, headers)


def make_worker(
    models: ModelSet,
    batches: list[list[Record]],
    fail: Any = None,
    settings: Settings | None = None,
    commit_error: Any = None,
) -> tuple[Worker, FakeConsumer, FakeProducer, list[str]]:
    log: list[str] = []
    consumer = FakeConsumer(log, batches, commit_error or (lambda _: None))
    producer = FakeProducer(log, fail or (lambda *_: None))
    worker = Worker(
        # One chunk a poll: these tests pin the delivery of a batch (chunks are each delivered
        # the same way: test_a_poll_is_delivered_chunk_by_chunk). Computed in this process:
        # the compute process has tests of its own (test_compute_process, test_handoff).
        (settings or Settings(chunk_target_ms=0)).replace(compute_process=False),
        "fake:9092",
        models,
        Metrics(),
        Health(),
        consumer=consumer,
        producer=producer,
    )
    worker.delivery.backoff_s = (0.001, 0.01)
    return worker, consumer, producer, log


def test_every_event_ends_in_one_result_and_offsets_commit_after_the_sends(
    models: ModelSet,
) -> None:
    good = encode_ct(ct_slice(1, 64))
    batch = [record(0, good), record(1, b"not dicom at all"), record(2, good[:300])]
    worker, consumer, producer, log = make_worker(models, [batch])
    stats = worker.run(drain=True)
    topics = [s.topic for s in producer.sent]
    assert topics.count("scans.findings") == 1 and topics.count("scans.dlq") == 2
    assert (stats.consumed, stats.findings, stats.dead_letters) == (3, 1, 2)
    assert stats.by_reason == {"not_dicom": 1, "truncated": 1}
    dead = [s for s in producer.sent if s.topic == "scans.dlq"]
    assert dead[0].value == b"not dicom at all" and dict(dead[0].headers)["event-id"] == b"e1"
    assert consumer.committed_offsets[consumer.tp].offset == 3
    # Asynchronous commits while running, confirmed by a synchronous one before leaving.
    assert log.index("commit_async") < log.index("commit") < log.index("consumer close")
    # Offsets are committed only after every send before them was flushed (acknowledged).
    assert_commits_follow_flushed_sends(log)
    finding = json.loads(next(s.value for s in producer.sent if s.topic == "scans.findings"))
    assert finding["event_id"] == "e0" and finding["source"]["offset"] == 0


def assert_commits_follow_flushed_sends(log: list[str]) -> None:
    commits = [i for i, entry in enumerate(log) if entry == "commit_async"]
    assert commits
    for c in commits:
        sends = [i for i, entry in enumerate(log[:c]) if entry.startswith("send")]
        assert sends and "flush" in log[sends[-1] : c], log


@pytest.mark.parametrize(("target_ms", "commits"), [(0.0, 1), (1e-6, 4)])
def test_a_poll_is_delivered_chunk_by_chunk(
    models: ModelSet, target_ms: float, commits: int
) -> None:
    # A target below any event's compute time makes every event a chunk of its own: each is
    # produced, acknowledged and committed before the poll's last one is done. 0: one chunk.
    good = [encode_ct(ct_slice(seed, 64)) for seed in range(4)]
    batch = [record(i, data) for i, data in enumerate(good)]
    settings = Settings(chunk_target_ms=target_ms, commit_interval_ms=0)
    worker, consumer, producer, log = make_worker(models, [batch], settings=settings)
    stats = worker.run(drain=True)
    assert (stats.consumed, stats.findings) == (4, 4)
    assert log.count("commit_async") == commits
    assert_commits_follow_flushed_sends(log)
    assert consumer.committed_offsets[consumer.tp].offset == 4
    offsets = [json.loads(s.value)["source"]["offset"] for s in producer.sent]
    assert offsets == [0, 1, 2, 3]  # chunks keep the partition's order


def test_an_unacknowledged_send_is_sent_again_alone_and_only_then_committed(
    models: ModelSet,
) -> None:
    good = encode_ct(ct_slice(2, 64))

    failures = [2]

    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        # The finding of offset 1 times out twice; everything else is acknowledged at once.
        if topic == "scans.findings" and b'"offset": 1' in value and failures[0] > 0:
            failures[0] -= 1
            return kafka_errors.KafkaTimeoutError("no ack")
        return None

    worker, consumer, producer, log = make_worker(
        models, [[record(0, good), record(1, good)]], fail
    )
    stats = worker.run(drain=True)
    findings = [s for s in producer.sent if s.topic == "scans.findings"]
    # Offset 0 once; offset 1 three times (two failures), and no replay of the batch.
    assert len(findings) == 4 and len(producer.acked("scans.findings")) == 2
    assert stats.findings == 2 and stats.replays == 2
    assert log.count("commit_async") == 1 and consumer.committed_offsets[consumer.tp].offset == 2
    assert b'scanstream_replays_total{cause="produce"} 2.0' in worker.metrics.render()


def test_a_refused_finding_becomes_its_dead_letter_and_the_batch_goes_on(
    models: ModelSet,
) -> None:
    good = encode_ct(ct_slice(3, 64))

    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        if topic == "scans.findings" and b'"offset": 0' in value:
            return kafka_errors.MessageSizeTooLargeError("too big for the findings topic")
        return None

    worker, consumer, producer, _ = make_worker(models, [[record(0, good), record(1, good)]], fail)
    stats = worker.run(drain=True)
    assert stats.by_reason == {"result_refused": 1} and stats.findings == 1
    [dead] = producer.acked("scans.dlq")
    assert dead.value == good and dict(dead.headers)["scanstream.error.reason"] == b"result_refused"
    assert b"MessageSizeTooLargeError" in (dict(dead.headers)["scanstream.error.detail"] or b"")
    assert consumer.committed_offsets[consumer.tp].offset == 2
    assert len(producer.acked("scans.findings")) == 1


def test_a_refused_dead_letter_is_reduced_until_it_fits(models: ModelSet) -> None:
    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        if topic == "scans.dlq" and value is not None:
            return kafka_errors.MessageSizeTooLargeError("too big for the dead-letter topic")
        return None

    original = record(0, b"x" * 1000, headers=[("h", b"1")])
    worker, consumer, producer, _ = make_worker(models, [[original]], fail)
    stats = worker.run(drain=True)
    [dead] = producer.acked("scans.dlq")
    headers = dict(dead.headers)
    assert dead.value is None and dead.key == b"study" and headers["h"] == b"1"
    assert headers["scanstream.error.dropped"] == b"value"
    assert b"sha256" in (headers["scanstream.error.detail"] or b"")
    assert stats.by_reason == {"not_dicom": 1}
    assert consumer.committed_offsets[consumer.tp].offset == 1


def test_null_key_value_and_headers_reach_the_dead_letters_as_nulls(models: ModelSet) -> None:
    odd = [("n", None), ("d", b"1"), ("d", b"2"), ("bad", b"\xff\xfe")]
    batch = [
        record(0, None, key=None, headers=odd),  # null key and null value
        record(1, None, headers=[]),  # a tombstone
        record(2, b"", key=None, headers=[("event-id", None)]),
    ]
    worker, consumer, producer, _ = make_worker(models, [batch])
    stats = worker.run(drain=True)
    dead = producer.acked("scans.dlq")
    assert [d.value for d in dead] == [None, None, b""]
    assert [d.key for d in dead] == [None, b"study", None]
    assert dead[0].headers[: len(odd)] == odd  # byte for byte, order and duplicates kept
    assert dead[2].headers[0] == ("event-id", None)
    assert stats.dead_letters == 3 and consumer.committed_offsets[consumer.tp].offset == 3


@pytest.mark.internal_error_expected
def test_internal_errors_become_dead_letters(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.pipeline as pipeline

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("bug in a stage")

    monkeypatch.setattr(pipeline, "prepare", boom)
    worker, consumer, producer, _ = make_worker(models, [[record(0, encode_ct(ct_slice(3, 64)))]])
    stats = worker.run(drain=True)
    assert stats.by_reason == {"internal_error": 1}
    headers = dict(producer.sent[0].headers)
    assert headers["scanstream.error.reason"] == b"internal_error"
    assert b"ZeroDivisionError" in (headers["scanstream.error.detail"] or b"")
    assert consumer.committed_offsets[consumer.tp].offset == 1


def test_models_that_cannot_run_any_more_stop_the_worker_without_a_dead_letter(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ModelError while computing (a compute process that could not be started again)
    stops the worker: nothing is sent for the chunk, nothing committed; the next worker
    computes it."""
    from worker.errors import ModelError

    worker, consumer, producer, _ = make_worker(models, [[record(0, encode_ct(ct_slice(3, 64)))]])

    def gone(*args: Any, **kwargs: Any) -> Any:
        raise ModelError("/models: models directory does not exist")

    monkeypatch.setattr(worker.pipeline, "process", gone)
    with pytest.raises(ModelError, match="models directory does not exist"):
        worker.run(drain=True)
    assert producer.sent == []
    assert consumer.tp not in consumer.committed_offsets


def test_a_slow_batch_pauses_partitions_and_keeps_polling(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.pipeline as pipeline

    real_prepare = pipeline.prepare

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.6)  # a slow model: longer than the patience before pausing
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", slow_prepare)
    # A 1.2 s poll interval: the loop pauses after waiting a quarter of it (0.3 s).
    settings = Settings(max_poll_interval_ms=1200)
    worker, consumer, _, log = make_worker(
        models, [[record(0, encode_ct(ct_slice(4, 64)))]], settings=settings
    )
    polls_while_paused = []
    original_poll = consumer.poll

    def poll(timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        if consumer.paused():
            polls_while_paused.append(timeout_ms)
        return original_poll(timeout_ms, max_records)

    consumer.poll = poll  # type: ignore[method-assign]
    stats = worker.run(drain=True)
    assert stats.findings == 1
    assert len(polls_while_paused) >= 3  # the member kept polling (stays in the group)
    assert log.index("pause") < log.index("resume") < log.index("commit_async")


def test_a_revoked_partition_is_not_retried_for_ever(models: ModelSet) -> None:
    """The broker refuses every produce; a rebalance takes the partition away: the loop gives
    the batch up (its next owner replays it) instead of retrying for ever."""
    worker, consumer, _, log = make_worker(
        models,
        [[record(0, encode_ct(ct_slice(5, 64)))]],
        fail=lambda *_: kafka_errors.NotLeaderForPartitionError("moving"),
    )
    polls = [0]

    def on_poll() -> None:
        polls[0] += 1
        if consumer.paused() and polls[0] > 5 and consumer.owned:
            consumer.revoke()
            worker.stop()

    consumer.on_poll = on_poll
    stats = worker.run()
    assert stats.findings == 0 and consumer.committed_offsets == {}
    assert stats.replays >= 1 and "commit_async" not in log


def test_a_failed_commit_is_counted_and_confirmed_later(models: ModelSet) -> None:
    good = encode_ct(ct_slice(6, 64))
    worker, consumer, _, _ = make_worker(
        models,
        [[record(0, good)], [record(1, good)]],
        commit_error=lambda n: kafka_errors.CommitFailedError("rebalancing") if n == 1 else None,
    )
    stats = worker.run(drain=True)
    assert stats.findings == 2 and consumer.committed_offsets[consumer.tp].offset == 2
    assert b'scanstream_replays_total{cause="commit"} 1.0' in worker.metrics.render()


def test_a_chunk_is_sent_at_once_and_finished_after_the_next_poll(
    models: ModelSet,
) -> None:
    # Two polls of one event each: the first event's finding is sent as soon as it is computed,
    # and its acknowledgement is waited for (flush) and its offset committed after the second
    # poll, while the compute thread has the next chunk.
    good = encode_ct(ct_slice(8, 64))
    worker, consumer, _, log = make_worker(
        models, [[record(0, good)], [record(1, good)]], settings=Settings(chunk_target_ms=20)
    )
    consumer.on_poll = lambda: log.append("poll")
    stats = worker.run(drain=True)
    assert stats.findings == 2 and consumer.committed_offsets[consumer.tp].offset == 2
    first_send = next(i for i, entry in enumerate(log) if entry.startswith("send"))
    assert log[:first_send].count("poll") == 1
    assert log[: log.index("flush")].count("poll") == 2
    assert log[: log.index("commit_async")].count("poll") == 2
    assert_commits_follow_flushed_sends(log)


def test_a_rebalance_while_a_chunk_waits_undoes_the_poll_and_delivers_the_chunk_once(
    models: ModelSet,
) -> None:
    """An eager rebalance (revoked, then given back) inside the poll after a chunk was computed:
    that poll may repeat the chunk's records (kafka-python restarts from the committed offset),
    so it is undone, the chunk delivered, and the partition positioned after it."""
    good = encode_ct(ct_slice(9, 64))
    # The third batch is what the consumer fetches again after the undone poll's seek.
    batches = [[record(0, good)], [record(1, good)], [record(1, good)]]
    worker, consumer, producer, log = make_worker(
        models, batches, settings=Settings(chunk_target_ms=20)
    )
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
    offsets = [json.loads(s.value)["source"]["offset"] for s in producer.sent]
    assert offsets == [0, 1]  # each once
    assert stats.findings == 2 and consumer.committed_offsets[consumer.tp].offset == 2
    second = [i for i, entry in enumerate(log) if entry == "poll"][1]
    # The undone poll's records are sought back, then the held chunk (offset 0, already sent)
    # is finished and its partition, given back to us, is positioned after it.
    assert log[second + 1 : second + 4] == ["seek 1", "flush", "commit_async"]
    assert "seek 1" in log[log.index("commit_async") :]


def test_the_waits_before_compute_are_observed_per_event(models: ModelSet) -> None:
    # Sent 2 s before now (the record timestamp, as no sent-at header is given): the arrival
    # wait (sent to polled) holds those 2 s, the queue wait (polled to computing) almost nothing.
    sent_ms = int((time.time() - 2.0) * 1000)
    good = encode_ct(ct_slice(1, 64))
    headers = [("content-type", b"application/dicom")]
    batch = [Record(TOPIC, 0, i, sent_ms, b"study", good, headers) for i in range(3)]
    worker, _, _, _ = make_worker(models, [batch])
    assert worker.run(drain=True).findings == 3
    text = worker.metrics.render().decode()
    count = re.compile(r'scanstream_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} (\S+)')
    seen = {(m.group(2), m.group(1)): float(m.group(3)) for m in count.finditer(text)}
    assert seen[("arrival", "count")] == seen[("queue", "count")] == 3.0
    assert 3 * 1.9 < seen[("arrival", "sum")] < 3 * 10.0
    assert 0.0 <= seen[("queue", "sum")] < 3 * 1.0


def test_drain_goes_on_when_the_committed_offsets_do_not_come_in_time(models: ModelSet) -> None:
    """kafka-python waits for an unanswered OffsetFetch without limit unless told otherwise:
    the drain check bounds it, and a timeout means "not known to be done", not a crash."""
    worker, consumer, _, _ = make_worker(models, [[record(0, encode_ct(ct_slice(1, 64)))]])
    asked: list[int | None] = []
    answer = consumer.committed

    def slow_once(tp: Any, timeout_ms: int | None = None) -> int | None:
        asked.append(timeout_ms)
        if len(asked) == 1:
            raise kafka_errors.KafkaTimeoutError("no OffsetFetch answer")
        return answer(tp)

    consumer.committed = slow_once  # type: ignore[method-assign]
    stats = worker.run(drain=True)
    assert stats.consumed == 1 and len(asked) >= 2
    assert all(t is not None and t > 0 for t in asked)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_the_findings_producer_does_not_linger(
    monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    """A chunk's findings go out as soon as it is computed: the worker's producer asks for no
    linger, whatever the factory's default (README, Benchmarks: the produce stage 0.3 ms
    instead of 1.5 at half load)."""
    seen = worker_producer_options(monkeypatch, Settings(delivery=delivery))
    assert seen["linger_ms"] == 0


def _one_event_polls(n: int) -> list[list[Record]]:
    return [[record(i, encode_ct(ct_slice(i, 64)))] for i in range(n)]


@pytest.mark.parametrize(("interval_ms", "commits"), [(0, 3), (60_000, 2)])
def test_commits_are_spaced_by_the_interval_and_made_once_a_poll_brings_nothing(
    models: ModelSet, interval_ms: float, commits: int
) -> None:
    # Three polls of one event: with no interval each is committed; with a long one the first
    # is committed at once, the next two wait, and the empty poll after them commits both.
    settings = Settings(chunk_target_ms=0, commit_interval_ms=interval_ms)
    worker, consumer, _, log = make_worker(models, _one_event_polls(3), settings=settings)
    consumer.on_poll = lambda: log.append("poll")
    stats = worker.run(drain=True)
    assert stats.findings == 3 and consumer.committed_offsets[consumer.tp].offset == 3
    assert log.count("commit_async") == commits
    assert_commits_follow_flushed_sends(log)
    if interval_ms:
        polls = [i for i, entry in enumerate(log) if entry == "poll"]
        last = [i for i, entry in enumerate(log) if entry == "commit_async"][-1]
        assert polls[3] < last  # after the fourth poll, the one that brought nothing


def test_offsets_held_back_are_committed_before_leaving(models: ModelSet) -> None:
    settings = Settings(chunk_target_ms=0, commit_interval_ms=60_000)
    worker, consumer, _, log = make_worker(models, _one_event_polls(3), settings=settings)
    stats = worker.run(max_events=3)  # stops with no empty poll: offsets 2 and 3 wait
    assert stats.findings == 3 and consumer.committed_offsets[consumer.tp].offset == 3
    assert log.count("commit_async") == 1
    assert log.index("commit") < log.index("consumer close")


def test_a_partition_given_back_resumes_after_the_results_whose_commit_waits(
    models: ModelSet,
) -> None:
    """kafka-python restarts a partition assigned back to this member from its committed
    offset: the listener points it after the results delivered and not yet committed, so that
    they are neither computed nor sent again."""
    settings = Settings(chunk_target_ms=0, commit_interval_ms=60_000)
    worker, consumer, _, log = make_worker(models, _one_event_polls(3), settings=settings)
    polls = [0]

    def on_poll() -> None:
        polls[0] += 1
        log.append("poll")
        if polls[0] == 4:  # offset 1 delivered and held back from the commit; offset 2 held
            assert consumer.listener is not None
            consumer.listener.on_partitions_revoked({consumer.tp})
            consumer.listener.on_partitions_assigned({consumer.tp})

    consumer.on_poll = on_poll
    stats = worker.run(drain=True)
    assert stats.findings == 3 and consumer.committed_offsets[consumer.tp].offset == 3
    fourth = [i for i, entry in enumerate(log) if entry == "poll"][3]
    assert log[fourth + 1] == "seek 2"  # the listener: after offset 1, committed or not
    sent = [entry for entry in log if entry.startswith("send")]
    assert len(sent) == 3  # each finding once
