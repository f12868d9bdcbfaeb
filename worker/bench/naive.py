"""The benchmark's baseline: a Kafka worker as it is commonly first written.

One record per poll, processed by the very same pipeline as the real worker
(:class:`~worker.pipeline.Pipeline`, one event at a time), each output sent
with ``producer.send(...).get()`` (one broker round trip per message), then a synchronous commit
per record: no batching of inference, no pipelining of produce, no batched commits. It
uses the project's client factories (``acks=all``, idempotent producer, manual commits), so the
only difference from :mod:`worker.runtime.loop` is the shape of the loop, and it gives the same
at-least-once guarantee. Dead letters carry the same headers as the real worker's.

Run it as ``python -m worker.bench.naive`` with the same environment as ``scanstream run``;
SIGTERM or SIGINT stops it after the current record.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.pipeline import Pipeline
from worker.runtime import kafka as kafka_clients
from worker.runtime.kafka import wire_headers
from worker.runtime.results import dead_letter_result, event_of, from_outcome, source_of
from worker.settings import Settings


def handle(record: Any, settings: Settings, pipeline: Pipeline, producer: Any) -> bool:
    """Process one record and wait for its outputs to be acknowledged; True for a finding."""
    event = event_of(record)
    if isinstance(event, ScanEvent):
        [outcome] = pipeline.process([event], [source_of(record)])
        result = from_outcome(record, outcome, settings)
    else:
        result = dead_letter_result(record, event, settings)
    for message in result.messages:
        assert message is not None
        topic, value, headers = message
        producer.send(topic, key=record.key, value=value, headers=wire_headers(headers)).get(
            timeout=settings.grace_period_s
        )
    return result.finding is not None


def run_naive(settings: Settings, bootstrap: str, stop: threading.Event) -> int:
    """Consume until ``stop`` is set; returns the number of records handled."""
    models = ModelSet.load(
        Path(settings.models_dir) if settings.models_dir else None, settings.require_gpu
    )
    pipeline = Pipeline(models, settings)
    consumer = kafka_clients.consumer(bootstrap, settings, topics=[settings.events_topic])
    producer = kafka_clients.producer(bootstrap, settings)
    handled = 0
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=settings.poll_timeout_ms, max_records=1)
            for records in batch.values():
                for record in records:
                    handle(record, settings, pipeline, producer)
                    consumer.commit()  # synchronous: one more round trip per record
                    handled += 1
    finally:
        consumer.close()
        producer.close(timeout=settings.grace_period_s)
    return handled


def main() -> int:
    settings = Settings.from_env()
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=False)
    kafka_clients.ensure_topics(bootstrap, settings)
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    handled = run_naive(settings, bootstrap, stop)
    print(json.dumps({"naive_handled": handled}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
