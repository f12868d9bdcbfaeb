"""kafka-python's group join against the real broker, with the guard of
:func:`worker.runtime.membership.guard_join`: a rejoin the client starts by itself (the topic
gained partitions) while the caller polls with waits shorter than the join ends with the member
holding every partition, not stranded mid-join."""

from __future__ import annotations

import time

import pytest
from kafka.admin import NewPartitions
from kafka_helpers import poll_until_assigned

from worker.runtime import kafka as kafka_clients
from worker.runtime.membership import member_state
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_a_rejoin_that_spans_short_polls_ends_with_every_partition(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    assert settings.bootstrap_servers
    topic = settings.events_topic
    # Metadata every 200 ms: the added partitions are seen, and the rejoin starts, within the
    # test's polls (the default is 5 minutes).
    consumer = kafka_clients.consumer(
        settings.bootstrap_servers, settings, topics=[topic], metadata_max_age_ms=200
    )
    admin = kafka_clients.admin_client(settings.bootstrap_servers, settings)
    try:
        assert poll_until_assigned(consumer, 3, 100, 30) == {0, 1, 2}
        admin.create_partitions({topic: NewPartitions(total_count=6)})
        # 1 ms polls: nearly every one returns while the join is on the wire, so one lands
        # between the leader's assignment and the SyncGroup answer (where, unguarded, the
        # client stopped waiting for the join and stayed <rebalancing> for good).
        held = poll_until_assigned(consumer, 6, 1, 60)
        assert held == {0, 1, 2, 3, 4, 5}, (held, member_state(consumer))
    finally:
        admin.close()
        consumer.close()


@pytest.mark.timeout(60)
def test_a_first_member_joins_its_group_once(isolated_settings: Settings) -> None:
    """The topic's metadata reaches the coordinator before the join
    (:func:`worker.runtime.kafka.subscribe`): without it, every first member joined, then
    rejoined when the metadata came (generation 2 within a second of its start, seen in 3 of 3
    fresh groups)."""
    settings = isolated_settings
    assert settings.bootstrap_servers
    consumer = kafka_clients.consumer(
        settings.bootstrap_servers, settings, topics=[settings.events_topic]
    )
    try:
        assert poll_until_assigned(consumer, 3, 100, 30) == {0, 1, 2}
        deadline = time.monotonic() + 3.0  # a rejoin came within 0.2 s of the first join
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        generation = consumer._coordinator._generation.generation_id
        assert (generation, member_state(consumer)) == (1, "<stable>")
    finally:
        consumer.close()
