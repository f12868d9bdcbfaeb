"""worker.series.service on in-memory clients: what is produced, and which offsets are committed
(only past findings whose summary the broker acknowledged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from kafka import OffsetAndMetadata, TopicPartition
from kafka import errors as kafka_errors

from tests.unit.runtime.fakes import FakeProducer, Record
from tests.unit.series.test_series_tracker import study_record
from worker.contract import validation_errors
from worker.series.service import Summarizer, series_group
from worker.settings import Settings

Make = Callable[..., dict[str, Any]]
SETTINGS = Settings(series_quiet_s=30.0).namespaced("u")
FINDINGS = TopicPartition(SETTINGS.findings_topic, 0)
STUDIES = TopicPartition(SETTINGS.studies_topic, 0)


class ScriptedConsumer:
    """Two partitions (findings-0, studies-0); each poll takes the next step of the script:
    the clock moves to its time and its records come back. Then the summarizer is stopped."""

    def __init__(self, log: list[str], script: list[tuple[float, list[Record]]]) -> None:
        self.log, self.script = log, list(script)
        self.now = 0.0
        self.owned = {FINDINGS, STUDIES}
        self.commits: list[dict[TopicPartition, int]] = []
        self._paused: set[TopicPartition] = set()
        self.stop: Callable[[], None] = lambda: None

    def clock(self) -> float:
        return self.now

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.subscribed = topics

    def topics(self) -> set[str]:
        return set(self.subscribed)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        if self._paused:
            return {}
        if not self.script:
            self.stop()
            return {}
        self.now, records = self.script.pop(0)
        out: dict[TopicPartition, list[Record]] = {}
        for r in records:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any) -> None:
        self.log.append("commit")
        self.commits.append({tp: om.offset for tp, om in offsets.items()})
        callback(offsets, {})

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.log.append("commit sync")

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.log.append(f"seek {tp.topic} {offset}")

    def close(self) -> None:
        self.log.append("consumer close")


def finding_record(finding: dict[str, Any], offset: int) -> Record:
    value = json.dumps(finding).encode()
    return Record(FINDINGS.topic, 0, offset, 0, finding["study_instance_uid"].encode(), value)


def run(
    script: list[tuple[float, list[Record]]],
    fail: Callable[[str, Any, int], BaseException | None] = lambda *_: None,
) -> tuple[ScriptedConsumer, FakeProducer, list[str], Summarizer]:
    log: list[str] = []
    consumer = ScriptedConsumer(log, script)
    producer = FakeProducer(log, fail)
    summarizer = Summarizer(
        SETTINGS, "unused:9092", consumer=consumer, producer=producer, clock=consumer.clock
    )
    summarizer.delivery.backoff_s = (0.01, 0.02)
    consumer.stop = summarizer.stop
    summarizer.run()
    assert consumer.subscribed == [SETTINGS.findings_topic, SETTINGS.studies_topic]
    return consumer, producer, log, summarizer


def summaries(producer: FakeProducer) -> list[dict[str, Any]]:
    out = []
    for sent in producer.acked(SETTINGS.series_topic):
        assert sent.value is not None
        document = json.loads(sent.value)
        assert validation_errors("series-summary.v1", document) == []
        assert sent.key == document["study_instance_uid"].encode()
        assert ("schema", b"series-summary.v1") in sent.headers
        out.append(document)
    return out


def test_commits_stop_at_the_first_finding_not_yet_summarised(make_finding: Make) -> None:
    a1 = make_finding("1.1", series="1.2.3.4")
    b1 = make_finding("1.2", series="1.2.3.5")
    b2 = make_finding("1.3", series="1.2.3.5")
    consumer, producer, _, summarizer = run(
        [
            (0.0, [finding_record(a1, 0), finding_record(b1, 1)]),
            (20.0, [finding_record(b2, 2)]),
            (30.0, []),  # A is quiet, B is not
            (50.0, [Record(FINDINGS.topic, 0, 3, 0, None, b"not json")]),  # B is quiet too
        ]
    )
    commits = [c[FINDINGS] for c in consumer.commits if FINDINGS in c]
    # Nothing past A's finding before A's summary; then up to B's first; then everything.
    assert commits == [1, 4]
    docs = summaries(producer)
    assert [(d["series_instance_uid"], d["instance_count"]) for d in docs] == [
        ("1.2.3.4", 1),
        ("1.2.3.5", 2),
    ]
    assert {d["trigger"] for d in docs} == {"quiet"}
    assert (summarizer.produced, summarizer.skipped) == (2, 1)


def test_study_complete_record_summarises_before_the_quiet_period(make_finding: Make) -> None:
    f1, f2 = make_finding("1.1"), make_finding("1.2")
    record = study_record("1.2.3", [("1.2.3.4", "1.1"), ("1.2.3.4", "1.2")])
    studies = Record(STUDIES.topic, 0, 0, 0, b"1.2.3", json.dumps(record).encode())
    consumer, producer, _, _ = run(
        [
            (0.0, [finding_record(f1, 0), studies]),  # the gateway ahead of the worker
            (1.0, [finding_record(f2, 1)]),
            (2.0, []),
        ]
    )
    [doc] = summaries(producer)
    assert (doc["trigger"], doc["instance_count"], doc["instances_expected"]) == (
        "study_complete",
        2,
        2,
    )
    assert consumer.commits[0] == {FINDINGS: 2}  # with the summary
    assert consumer.commits[1] == {STUDIES: 1}  # the record, once nothing waits on it


def test_offsets_are_committed_only_once_the_summary_is_acknowledged(make_finding: Make) -> None:
    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        first = topic == SETTINGS.series_topic and attempt == 0
        return kafka_errors.KafkaTimeoutError("broker away") if first else None

    consumer, producer, log, _ = run(
        [(0.0, [finding_record(make_finding("1.1"), 0)]), (30.0, [])], fail=fail
    )
    assert len(summaries(producer)) == 1
    sends = [i for i, line in enumerate(log) if line == f"send {SETTINGS.series_topic}"]
    assert len(sends) == 2  # sent again after the failure
    assert log.index("commit") > sends[-1]
    assert consumer.commits == [{FINDINGS: 1}]


def test_records_that_are_no_finding_are_skipped_and_committed_past(make_finding: Make) -> None:
    hostile = [
        b"\xff\xfe not utf-8",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
        b"[1, 2]",
        json.dumps({**make_finding("1.1"), "classifications": [[1]]}).encode(),
        json.dumps({**make_finding("1.1"), "schema": "scanstream.alert.v1"}).encode(),
        json.dumps({**make_finding("1.1"), "series_instance_uid": None}).encode(),
    ]
    records = [Record(FINDINGS.topic, 0, i, 0, None, v) for i, v in enumerate(hostile)]
    studies = Record(STUDIES.topic, 0, 0, 0, None, b'{"study_instance_uid": "1.2"}')
    consumer, producer, _, summarizer = run([(0.0, [*records, studies]), (1.0, [])])
    assert summarizer.skipped == len(hostile) + 1 and producer.sent == []
    assert consumer.commits == [{FINDINGS: len(hostile), STUDIES: 1}]


def test_the_group_is_its_own() -> None:
    assert series_group(SETTINGS) == "u-series"


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--quiet", "0"], {}, "SCANSTREAM_SERIES_QUIET_S"),
        ([], {"SCANSTREAM_SERIES_QUIET_S": "soon"}, "SCANSTREAM_SERIES_QUIET_S"),
        ([], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "SCANSTREAM_CONNECT_TIMEOUT_S": "1"}, "9"),
    ],
)
def test_summarize_fails_fast_naming_what_to_fix(
    args: list[str], env: dict[str, str], says: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "summarize", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
