"""Delivery guarantees under real faults: kill -9, broker restart, a joining worker, exactly-once,
SIGTERM. Each test prints sent / findings / dead letters / duplicates / missing.

Workers run as real subprocesses (`python -m worker.cli run`) against the real broker; events are
128x128 CT phantoms, enough of them that every fault lands mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from worker import broker
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import handoff
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import publish_bytes
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

N_EVENTS = 240


_SPAWNED: list[subprocess.Popen[bytes]] = []


def spawn(settings: Settings, log: Path, *args: str, **env_extra: str) -> subprocess.Popen[bytes]:
    """A worker subprocess; the ``reap`` fixture kills whatever a test leaves running."""
    assert settings.bootstrap_servers
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")},
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SCANSTREAM_EVENTS_TOPIC": settings.events_topic,
        "SCANSTREAM_FINDINGS_TOPIC": settings.findings_topic,
        "SCANSTREAM_ALERTS_TOPIC": settings.alerts_topic,
        "SCANSTREAM_DLQ_TOPIC": settings.dlq_topic,
        "SCANSTREAM_GROUP_ID": settings.group_id,
        "SCANSTREAM_MAX_POLL_RECORDS": "16",
        # The group's rebalance timeout is the poll interval: a JoinGroup that timed out on an
        # overloaded machine leaves a pending member the broker waits for that long (seen
        # once as "timed out waiting for the first findings"). 30 s bounds that wait.
        "SCANSTREAM_MAX_POLL_INTERVAL_MS": "30000",
        **env_extra,
    }
    with open(log, "ab") as out:
        # INFO: the group's join and assignment show in a failing test's output.
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--log-level", "INFO", "run", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def reap() -> Iterator[None]:
    """No worker outlives its test: a leaked one would load the machine and fail a later test
    with a ResourceWarning (seen: a failed wait left the sigterm test's worker running)."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def publish(settings: Settings, n: int = N_EVENTS, size: int = 128) -> list[str]:
    assert settings.bootstrap_servers
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    ids = []
    for i in range(n):
        data = encode_ct(ct_slice(i, size), study=f"study-{i % 12}", instance=i)
        ids.append(publish_bytes(producer, settings, data, event_id=f"ev-{i}").event_id)
    producer.flush()
    producer.close()
    return ids


def produced(settings: Settings) -> int:
    """Records written to the findings topic so far (a cheap progress probe)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        tps = [
            TopicPartition(settings.findings_topic, p)
            for p in consumer.partitions_for_topic(settings.findings_topic) or {0}
        ]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        exited = [p for p in _SPAWNED if p.poll() is not None]
        if exited:  # a worker that died will not produce: say so now, not after the timeout
            raise AssertionError(f"waiting for {what}: worker exited with {exited[0].returncode}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tally(settings: Settings, sent: list[str], wait_s: float = 120.0) -> dict[str, int]:
    """Read every committed finding and dead letter; count per event id."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    tps = [
        TopicPartition(t, p)
        for t in (settings.findings_topic, settings.dlq_topic)
        for p in consumer.partitions_for_topic(t) or {0}
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen: Counter[str] = Counter()
    dead = 0
    deadline = time.monotonic() + wait_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == settings.dlq_topic:
                        dead += 1
                        seen[dict(r.headers)["event-id"].decode()] += 1
                    else:
                        seen[json.loads(r.value)["event_id"]] += 1
            if batch:
                quiet_since = time.monotonic()
            if set(sent) <= set(seen) and time.monotonic() - quiet_since > 2.0:
                break
    finally:
        consumer.close()
    counts = {
        "sent": len(sent),
        "findings": sum(seen.values()) - dead,
        "dead_letters": dead,
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(set(sent) - set(seen)),
    }
    print(f"counts: {counts}")
    return counts


def at_fault(settings: Settings, sent: list[str]) -> None:
    print(f"fault injected with {produced(settings)} of {len(sent)} findings produced")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout_s)


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for log in sorted(tmp_path.glob("*.log")):  # shown only when a test fails
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_kill_9_mid_stream_then_restart_loses_nothing(
    isolated_settings: Settings, logs: Path
) -> None:
    sent = publish(isolated_settings)
    first = spawn(isolated_settings, logs / "w1.log")
    wait_for(lambda: produced(isolated_settings) >= 30, 90, "the first findings")
    at_fault(isolated_settings, sent)
    first.kill()  # SIGKILL: no drain, no commit, no goodbye to the group
    first.wait()
    second = spawn(isolated_settings, logs / "w2.log", "--drain")
    assert second.wait(timeout=180) == 0
    counts = tally(isolated_settings, sent)
    assert counts["missing"] == 0 and counts["dead_letters"] == 0
    # The chunks the killed worker's child had not read yet are gone from /dev/shm: the next
    # worker's start removed them (worker/runtime/handoff.py, sweep).
    assert not list(handoff.SHARED_MEMORY.glob(f"{handoff.PREFIX}{first.pid}-*"))


def test_broker_restart_mid_stream_recovers_without_help(tmp_path: Path, logs: Path) -> None:
    state = tmp_path / "own-broker"
    info, _ = broker.start(state_dir=state)
    try:
        run = uuid.uuid4().hex[:8]
        settings = Settings(bootstrap_servers=info.bootstrap).namespaced(f"r{run}")
        kafka_clients.ensure_topics(info.bootstrap, settings)
        sent = publish(settings)
        worker = spawn(settings, logs / "w.log")
        try:
            wait_for(lambda: produced(settings) >= 30, 90, "the first findings")
            at_fault(settings, sent)
            broker.restart_in_place(info, state, down_s=3.0)
            counts = tally(settings, sent, wait_s=180)
        finally:
            code = stop(worker)
        assert counts["missing"] == 0 and counts["dead_letters"] == 0
        assert code == 0
    finally:
        broker.stop(state_dir=state)


def test_second_worker_joins_mid_stream(isolated_settings: Settings, logs: Path) -> None:
    sent = publish(isolated_settings)
    first = spawn(isolated_settings, logs / "w1.log")
    second = None
    try:
        wait_for(lambda: produced(isolated_settings) >= 30, 90, "the first findings")
        at_fault(isolated_settings, sent)
        second = spawn(isolated_settings, logs / "w2.log")
        counts = tally(isolated_settings, sent, wait_s=180)
    finally:
        codes = [stop(p) for p in (first, second) if p is not None]
    assert counts["missing"] == 0 and counts["dead_letters"] == 0
    assert codes == [0, 0]


def test_exactly_once_survives_kill_9(isolated_settings: Settings, logs: Path) -> None:
    sent = publish(isolated_settings)
    eos = {"SCANSTREAM_DELIVERY": "exactly-once", "SCANSTREAM_WORKER_ID": "eos-replica-0"}
    first = spawn(isolated_settings, logs / "w1.log", **eos)
    wait_for(lambda: produced(isolated_settings) >= 30, 90, "the first findings")
    at_fault(isolated_settings, sent)
    first.kill()
    first.wait()
    second = spawn(isolated_settings, logs / "w2.log", "--drain", **eos)
    assert second.wait(timeout=180) == 0
    counts = tally(isolated_settings, sent)
    assert counts["missing"] == 0 and counts["duplicates"] == 0


def test_sigterm_under_load_drains_in_grace_and_commits(
    isolated_settings: Settings, logs: Path
) -> None:
    sent = publish(isolated_settings)
    grace = 20.0
    first = spawn(isolated_settings, logs / "w1.log", SCANSTREAM_GRACE_PERIOD_S=str(grace))
    wait_for(lambda: produced(isolated_settings) >= 30, 90, "the first findings")
    at_fault(isolated_settings, sent)
    t0 = time.monotonic()
    first.send_signal(signal.SIGTERM)
    code = first.wait(timeout=grace + 10)
    took = time.monotonic() - t0
    print(f"exit {code} after SIGTERM in {took:.1f} s (grace {grace:.0f} s)")
    assert code == 0 and took <= grace
    second = spawn(isolated_settings, logs / "w2.log", "--drain")
    assert second.wait(timeout=180) == 0
    counts = tally(isolated_settings, sent)
    # Everything the first worker produced was committed, so nothing was processed twice.
    assert counts["missing"] == 0 and counts["duplicates"] == 0


def test_two_processes_share_the_group_and_keep_per_study_order(
    isolated_settings: Settings, logs: Path
) -> None:
    """``run --processes 2``: both processes take partitions, and each study's findings keep
    their publish order. Events keep coming until findings of both processes appear (however
    fast one process alone would have drained a fixed batch before the other joined)."""
    settings = isolated_settings
    assert settings.bootstrap_servers
    proc = spawn(settings, logs / "pool.log", "--processes", "2")
    reader = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    topic = settings.findings_topic
    tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or {0}]
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    sent: list[str] = []
    workers: set[str] = set()
    offsets_by_study: dict[bytes, list[int]] = {}
    seen: set[str] = set()

    def read(timeout_ms: int) -> None:
        for records in reader.poll(timeout_ms=timeout_ms).values():
            for r in records:
                finding = json.loads(r.value)
                workers.add(finding["worker_id"])
                if finding["event_id"] not in seen:  # first delivery of each event
                    seen.add(finding["event_id"])
                    offsets_by_study.setdefault(r.key, []).append(finding["source"]["offset"])

    try:
        deadline = time.monotonic() + 150
        while len(workers) < 2:
            assert time.monotonic() < deadline, f"only {sorted(workers)} produced findings"
            for i in range(len(sent), len(sent) + 24):
                data = encode_ct(ct_slice(i, 128), study=f"study-{i % 12}", instance=i)
                sent.append(publish_bytes(producer, settings, data, event_id=f"ev-{i}").event_id)
            producer.flush()
            read(1000)
        while set(sent) - seen and time.monotonic() < deadline:
            read(300)
    finally:
        producer.close()
        reader.close()
        code = stop(proc)
    assert code == 0
    counts = tally(settings, sent)
    assert counts["missing"] == 0 and counts["dead_letters"] == 0
    print(f"workers={sorted(workers)} studies={len(offsets_by_study)} events={len(sent)}")
    assert len(workers) == 2  # both processes took part
    for key, offsets in offsets_by_study.items():
        assert offsets == sorted(offsets), key  # one study's events in publish order
