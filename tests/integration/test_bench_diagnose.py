"""The benchmark's diagnosis of a silent phase, against the real broker: the group as the broker
describes it, and a worker's /healthz that does not answer."""

from __future__ import annotations

import pytest
from kafka_helpers import poll_until_assigned

from worker.bench.diagnose import diagnose
from worker.broker import free_port
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_a_diagnosis_names_the_group_state_and_who_holds_what(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    assert settings.bootstrap_servers
    bootstrap = settings.bootstrap_servers
    assert diagnose(bootstrap, settings).startswith(f"group {settings.group_id} Dead, 0 member")
    consumer = kafka_clients.consumer(bootstrap, settings, topics=[settings.events_topic])
    try:
        assert poll_until_assigned(consumer, 3, 100, 30) == {0, 1, 2}
        said = diagnose(bootstrap, settings, metrics_port=free_port())
        assert f"group {settings.group_id} Stable, 1 member(s): {settings.worker_id} holds" in said
        assert f"{settings.events_topic}[0, 1, 2]" in said
        assert "/healthz unreachable" in said
    finally:
        consumer.close()
