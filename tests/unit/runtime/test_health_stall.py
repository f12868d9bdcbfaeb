"""A partition stuck behind a broker that acknowledges nothing turns /healthz red (503, with the
reason), and green again once its offsets advance. The loop runs for real on a thread, against
the fakes; only the health clock is simulated, so no test waits two minutes."""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any

from kafka import errors as kafka_errors

from tests.unit.runtime.fakes import TOPIC, FakeConsumer, FakeProducer, Record
from worker.inference import ModelSet
from worker.metrics import Health, Metrics, serve
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.loop import Worker
from worker.settings import Settings


def _get(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_stuck_partition_turns_healthz_red_and_back() -> None:
    now = [1000.0]
    health = Health(clock=lambda: now[0], stall_timeout_s=60)
    broker_down = threading.Event()
    broker_down.set()

    def fail(topic: str, value: Any, attempt: int) -> BaseException | None:
        return kafka_errors.KafkaTimeoutError("broker away") if broker_down.is_set() else None

    record = Record(TOPIC, 0, 0, 1_700_000_000_000, b"k", encode_ct(ct_slice(7, 64)), [])
    log: list[str] = []
    consumer, producer = FakeConsumer(log, [[record]]), FakeProducer(log, fail)
    worker = Worker(
        Settings(compute_process=False),  # the loop in one process: fakes cannot cross
        "fake:9092",
        ModelSet.load(),
        Metrics(),
        health,
        consumer=consumer,
        producer=producer,
    )
    worker.delivery.backoff_s = (0.01, 0.02)
    # The silence window is wide: only the stall rule is under test (the clock jumps).
    with serve(worker.metrics, health, "127.0.0.1", 0, max_silence_s=10_000) as server:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            _until(lambda: worker.stats.replays >= 2)  # stuck: sends fail, nothing committed
            assert _get(server.port) == (200, b"ok\n")  # not yet past the stall timeout
            now[0] += 61
            status, body = _get(server.port)
            assert status == 503
            assert body.startswith(b"stalled: no offset committed for 61 s while 1 records wait")
            assert b"KafkaTimeoutError" in body
            broker_down.clear()  # the broker is back: the batch is delivered and committed
            _until(lambda: consumer.committed(consumer.tp) == 1)
            _until(lambda: _get(server.port)[0] == 200)
            assert _get(server.port) == (200, b"ok\n")
        finally:
            worker.stop()
            thread.join(timeout=30)
    assert not thread.is_alive()
    assert worker.stats.findings == 1
