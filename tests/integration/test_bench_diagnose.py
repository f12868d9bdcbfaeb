"""The benchmark's diagnosis of a silent phase, against the real broker: the group as the broker
describes it, where the events stopped, and a worker's /healthz that does not answer."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
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
        producer = kafka_clients.producer(bootstrap, settings)
        try:
            for _ in range(2):
                producer.send(settings.events_topic, b"event", partition=1)
            producer.send(settings.dlq_topic, b"dead letter")
            producer.flush(timeout=30)
        finally:
            producer.close()
        consumer.commit({TopicPartition(settings.events_topic, 1): OffsetAndMetadata(1, "", -1)})
        said = diagnose(bootstrap, settings, metrics_port=free_port())
        assert f"{settings.events_topic} end/committed 0/- 2/1 0/-" in said
        assert f"{settings.findings_topic} 0 records; {settings.dlq_topic} 1 records" in said
        assert "/metrics unreachable" in said
        assert f"group {settings.group_id} Stable, 1 member(s): {settings.worker_id} holds" in said
        assert f"{settings.events_topic}[0, 1, 2]" in said
        assert "/healthz unreachable" in said
    finally:
        consumer.close()
