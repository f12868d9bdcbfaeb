"""A model slower than max_poll_interval_ms must not get the worker evicted from its group.

The batch below takes about 6 s against a 3 s poll interval. A loop that simply blocked would be
evicted, its commit would fail and the batch would be processed twice; the worker instead pauses
its partitions and keeps polling while the batch runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kafka_helpers import collect, worker_thread

import worker.pipeline as pipeline
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import publish_bytes
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_slow_model_keeps_group_membership(
    isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated_settings.replace(max_poll_interval_ms=3000, max_poll_records=4)
    assert settings.bootstrap_servers
    real_prepare = pipeline.prepare

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", slow_prepare)
    producer = kafka_clients.producer(settings.bootstrap_servers, settings)
    sent = [
        publish_bytes(producer, settings, encode_ct(ct_slice(i, 64)), f"slow-{i}").event_id
        for i in range(8)
    ]
    producer.flush()
    producer.close()
    with worker_thread(settings) as worker:
        got = collect(settings, expected=len(sent), timeout_s=120, settle_s=4.0)
        stats = worker.stats
    ids = [json.loads(r.value)["event_id"] for r in got.findings]
    print(
        f"sent={len(sent)} findings={len(ids)} dead_letters={len(got.dead_letters)} "
        f"duplicates={len(ids) - len(set(ids))} missing={len(set(sent) - set(ids))}"
    )
    assert sorted(ids) == sorted(sent)  # each exactly once: no eviction, no replay
    assert stats.consumed == len(sent)
