"""Every record shape Kafka can carry, published by a second client (confluent-kafka, librdkafka:
it does not share kafka-python's assumptions), interleaved with good slices and hostile
references, through the real broker and a real ``scanstream run --drain`` process.

The run must end by itself; every record must end in exactly one finding or dead letter, with
the dead letter keeping the original key, value and headers; no finding may be duplicated; the
worker's peak RSS must stay under 1 GiB; a loopback HTTP server named in reference events must
be asked exactly as often as the retry budget allows, never again on a replay.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from loopback_http import serving

from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

confluent_kafka = pytest.importorskip("confluent_kafka")
pytestmark = pytest.mark.integration

LIMIT = 1 << 20  # SCANSTREAM_MAX_MESSAGE_BYTES for this run: 1 MiB
DICOM = [("content-type", b"application/dicom")]
JSON = [("content-type", b"application/json")]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """/busy answers 503; /drip sends one byte every 0.3 s (for at most 20 s)."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(66):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)
            return
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    _Recorder.requests = []
    with serving(_Recorder, daemon_threads=True) as url:
        yield url


def _ref(uri: str) -> bytes:
    return json.dumps({"uri": uri}).encode()


def _cases(tmp_path: Path, http: str) -> list[tuple[str, bytes | None, Any, list[Any], str | None]]:
    """(name, key, value, headers, expected dead-letter reason or None for a finding)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    sparse = tmp_path / "sparse.dcm"
    with sparse.open("wb") as f:
        f.truncate(2 << 30)  # 2 GiB, no blocks on disk
    tiny = encode_ct(np.zeros((1, 4), np.float32), study="tiny")

    def good(instance: int) -> bytes:  # a distinct instance each: findings must not repeat
        return encode_ct(ct_slice(instance, 128), study="odd", instance=instance)

    cases: list[tuple[str, bytes | None, Any, list[Any], str | None]] = [
        ("tombstone", b"study", None, [], "schema_error"),
        ("null key and value", None, None, [], "schema_error"),
        ("null key and value, headers", None, None, [("x", None), ("x", b"1")], "schema_error"),
        ("empty value", b"study", b"", DICOM, "not_dicom"),
        ("null header value", None, good(1), [*DICOM, ("event-id", None)], None),
        (
            "duplicate headers",
            b"s",
            good(2),
            [*DICOM, ("event-id", b"a"), ("event-id", b"b")],
            None,
        ),
        ("non-UTF-8 header", b"s", good(3), [*DICOM, ("event-id", b"\xff\xfe\x00")], None),
        ("non-UTF-8 content-type", b"s", good(4), [("content-type", b"\xff")], "schema_error"),
        ("lower-case sent-at", b"s", good(5), [*DICOM, ("sent-at", b"2026-01-01t00:00:00z")], None),
        ("over the limit", b"s", b"\0" * (LIMIT + 500_000), DICOM, "too_large"),
        ("1x4 image", b"s", tiny, DICOM, "unsupported_image"),
        ("not JSON", b"s", b"{nope", JSON, "schema_error"),
        ("/dev/zero", b"s", _ref("file:///dev/zero"), JSON, "fetch_error"),
        ("FIFO", b"s", _ref(fifo.as_uri()), JSON, "fetch_error"),
        ("directory", b"s", _ref((tmp_path / "folder").as_uri()), JSON, "fetch_error"),
        ("2 GB sparse file", b"s", _ref(sparse.as_uri()), JSON, "too_large"),
        ("bad IPv6 URI", b"s", _ref("http://[::1/x"), JSON, "schema_error"),
        ("space in host", b"s", _ref("http://exa mple.com/x"), JSON, "fetch_error"),
        ("busy server", b"s", _ref(f"{http}/busy"), JSON, "fetch_error"),
        ("dripping server", b"s", _ref(f"{http}/drip"), JSON, "fetch_error"),
    ]
    return cases


def test_every_record_shape_ends_in_exactly_one_result(
    kafka_bootstrap: str, tmp_path: Path, http_server: str
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        {}, bootstrap_servers=kafka_bootstrap, max_message_bytes=LIMIT
    ).namespaced(f"hostile{run}")
    kafka_clients.ensure_topics(kafka_bootstrap, settings)

    good = [
        encode_ct(ct_slice(seed, 128), study=f"s{seed % 5}", instance=seed) for seed in range(40)
    ]
    hostile = _cases(tmp_path, http_server)
    plan: list[tuple[str, bytes | None, Any, list[Any], str | None]] = []
    for i, data in enumerate(good):  # hostile records interleaved with good slices
        plan.append((f"good {i}", f"s{i % 5}".encode(), data, DICOM, None))
        if i % 2 == 0 and hostile:
            plan.append(hostile.pop(0))
    plan += hostile

    where: dict[tuple[int, int], int] = {}  # (partition, offset) -> index into plan
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4 << 20, "linger.ms": 5}
    )
    for index, (_, key, value, headers, _) in enumerate(plan):

        def report(err: Any, msg: Any, index: int = index) -> None:
            assert err is None, err
            where[(msg.partition(), msg.offset())] = index

        producer.produce(
            settings.events_topic, value=value, key=key, headers=headers, on_delivery=report
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(where) == len(plan)

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCANSTREAM_EVENTS_TOPIC": settings.events_topic,
        "SCANSTREAM_FINDINGS_TOPIC": settings.findings_topic,
        "SCANSTREAM_ALERTS_TOPIC": settings.alerts_topic,
        "SCANSTREAM_DLQ_TOPIC": settings.dlq_topic,
        "SCANSTREAM_GROUP_ID": settings.group_id,
        "SCANSTREAM_MAX_MESSAGE_BYTES": str(LIMIT),
        "SCANSTREAM_FETCH_TIMEOUT_S": "2",
        "SCANSTREAM_FETCH_ATTEMPTS": "2",
        "SCANSTREAM_EVENT_TIMEOUT_S": "20",
        "SCANSTREAM_REFERENCE_ALLOW": f"file:///dev/,{tmp_path.as_uri()}/,{http_server}/",
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--drain"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # The reason for this limit: the run needs ~20 s here (the dripping server's two 2 s
    # deadlines included); 240 s is "it wedged", not "it was slow".
    output = _read_all(proc, timeout_s=240)
    if proc.stdout is not None:
        proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_mib = usage.ru_maxrss / 1024  # Linux reports KiB
    print(
        f"\n{len(plan)} records: run --drain ended in {time.monotonic() - started:.1f} s, "
        f"exit {proc.returncode}, worker peak RSS {peak_mib:.0f} MiB"
    )
    assert proc.returncode == 0, output[-3000:]
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"

    findings, dead = _results(kafka_bootstrap, settings, expected=len(plan))
    seen: dict[int, list[str]] = {}
    for msg in findings:
        source = json.loads(msg.value())["source"]
        seen.setdefault(where[(source["partition"], source["offset"])], []).append("finding")
    for msg in dead:
        headers = msg.headers() or []
        ours = {k: v for k, v in headers if k.startswith("scanstream.error.")}
        index = where[
            (int(ours["scanstream.error.partition"]), int(ours["scanstream.error.offset"]))
        ]
        reason = ours["scanstream.error.reason"].decode()
        seen.setdefault(index, []).append(reason)
        name, key, value, original_headers, _ = plan[index]
        assert msg.value() == value, name  # a null value stays null
        assert msg.key() == key, name
        assert headers[: len(original_headers)] == original_headers, name  # byte for byte
    got = {plan[i][0]: results for i, results in seen.items()}
    want = {name: ["finding" if reason is None else reason] for name, _, _, _, reason in plan}
    assert got == want
    ids = [json.loads(m.value())["finding_id"] for m in findings]
    assert len(ids) == len(set(ids)), "a finding was produced twice"
    # The busy server was asked exactly fetch_attempts (2) times; the drip the same.
    assert sorted(_Recorder.requests) == ["/busy", "/busy", "/drip", "/drip"]


def _read_all(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.append(proc.stdout.read() if proc.stdout else b"")
    )
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        proc.kill()
        reader.join(10)
        pytest.fail(f"run --drain did not end within {timeout_s} s: {b''.join(chunks)[-3000:]!r}")
    return b"".join(chunks).decode("utf-8", "replace")


def _results(bootstrap: str, settings: Settings, expected: int) -> tuple[list[Any], list[Any]]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 8 << 20,
            "max.partition.fetch.bytes": 8 << 20,
        }
    )
    consumer.subscribe([settings.findings_topic, settings.dlq_topic])
    findings: list[Any] = []
    dead: list[Any] = []
    deadline = time.monotonic() + 60
    settle: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                (findings if msg.topic() == settings.findings_topic else dead).append(msg)
            if len(findings) + len(dead) >= expected:
                settle = settle or time.monotonic() + 2  # keep reading: duplicates would show
                if time.monotonic() >= settle:
                    break
    finally:
        consumer.close()
    return findings, dead
