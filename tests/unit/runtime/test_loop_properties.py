"""Property: whatever records arrive and whatever the broker does to sends and commits, every
record ends in exactly one acknowledged finding or dead letter, the dead letter keeps the
original, and every offset is committed.

The fakes enforce kafka-python's own ``send()`` rules (see ``fakes.py``); failures are drawn per
send (acknowledged, transient, refused for good) and per commit.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import errors as kafka_errors

from tests.unit.runtime.fakes import TOPIC, FakeConsumer, FakeProducer, Record, Sent
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.loop import Worker
from worker.settings import Settings


@cache
def models() -> ModelSet:
    return ModelSet.load()


@cache
def good_slices() -> tuple[bytes, ...]:
    return tuple(encode_ct(ct_slice(seed, 64)) for seed in (1, 2))


header_values = st.one_of(st.none(), st.binary(max_size=8), st.just(b"\xff\xfe"))
headers = st.lists(st.tuples(st.sampled_from(["a", "event-id", "sent-at", "x"]), header_values))
values = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=64),
    st.sampled_from([0, 1]).map(lambda i: good_slices()[i]),
    st.just(b'{"uri": "file:///nonexistent/scanstream/x.dcm"}'),
    st.just(b'{"uri": 17}'),
    st.just(b"{not json"),
)
records = st.lists(
    st.tuples(st.one_of(st.none(), st.binary(max_size=8)), values, headers),
    min_size=1,
    max_size=12,
)
outcomes = st.lists(st.sampled_from(["ok", "ok", "ok", "transient", "refused"]), max_size=30)


def _offset_of(sent: Sent) -> int:
    if sent.topic == "scans.findings":
        return int(json.loads(sent.value or b"{}")["source"]["offset"])
    offsets = [v for k, v in sent.headers if k == "scanstream.error.offset"]
    return int(offsets[-1] or b"-1")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    records=records,
    split=st.integers(1, 5),
    plan=outcomes,
    commit_failures=st.sets(st.integers(1, 6), max_size=3),
)
def test_every_record_ends_in_exactly_one_committed_result(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    split: int,
    plan: list[str],
    commit_failures: set[int],
) -> None:
    log: list[str] = []
    originals = [
        Record(TOPIC, 0, i, 1_700_000_000_000, key, value, list(hs))
        for i, (key, value, hs) in enumerate(records)
    ]
    batches = [originals[i : i + split] for i in range(0, len(originals), split)]
    steps = iter(plan)

    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        step = next(steps, "ok")  # once the plan is spent the broker is healthy
        if step == "transient":
            return kafka_errors.KafkaTimeoutError("no acknowledgement")
        if step == "refused":
            return kafka_errors.MessageSizeTooLargeError("refused")
        return None

    def commit_error(n: int) -> BaseException | None:
        return kafka_errors.CommitFailedError("rebalance") if n in commit_failures else None

    consumer = FakeConsumer(log, batches, commit_error)
    producer = FakeProducer(log, fail)
    worker = Worker(
        Settings(compute_process=False),  # the loop in one process: fakes cannot cross
        "fake:9092",
        models(),
        Metrics(),
        Health(),
        consumer=consumer,
        producer=producer,
    )
    worker.delivery.backoff_s = (0.0005, 0.002)
    stats = worker.run(drain=True)

    primary = [s for s in producer.acked() if s.topic in ("scans.findings", "scans.dlq")]
    by_offset: dict[int, list[Sent]] = {}
    for sent in primary:
        by_offset.setdefault(_offset_of(sent), []).append(sent)
    assert sorted(by_offset) == list(range(len(originals)))
    assert all(len(results) == 1 for results in by_offset.values()), by_offset
    assert stats.findings + stats.dead_letters == len(originals)
    assert "internal_error" not in stats.by_reason
    assert consumer.committed_offsets[consumer.tp].offset == len(originals)
    for offset, [sent] in by_offset.items():
        original = originals[offset]
        if sent.topic != "scans.dlq":
            continue
        dropped = dict(sent.headers).get("scanstream.error.dropped")
        if dropped is None:  # the original exactly, then the error headers
            assert sent.value == original.value and sent.key == original.key
            assert sent.headers[: len(original.headers)] == original.headers
        else:
            assert sent.value is None
