"""Start-up against the real broker fails fast, with a message that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from worker.errors import BrokerError
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration


def test_a_topic_that_cannot_be_created_fails_start(kafka_bootstrap: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCANSTREAM_EVENTS_TOPIC": "not a valid topic name!",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--drain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot create or list the topics" in proc.stderr
    assert "not a valid topic name!" in proc.stderr and "Traceback" not in proc.stderr


def test_topics_are_created_with_the_configured_replication_settings(
    kafka_bootstrap: str,
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap, topic_replication_factor=1, topic_min_insync_replicas=1
    ).namespaced(f"rf{uuid.uuid4().hex[:8]}")
    kafka_clients.ensure_topics(kafka_bootstrap, settings)
    admin = kafka_clients.admin_client(kafka_bootstrap, settings)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.dlq_topic)]
        )
    finally:
        admin.close()
    [configs] = [by_name[settings.dlq_topic] for by_name in described.values()]
    assert configs["min.insync.replicas"]["value"] == "1", configs
    limit = settings.max_message_bytes + 2 * (1 << 20)  # the dead letters' extra MiB
    assert configs["max.message.bytes"]["value"] == str(limit), configs
    # More replicas than the cluster has brokers: start fails naming the setting.
    three = settings.replace(topic_replication_factor=3).namespaced(f"rf{uuid.uuid4().hex[:8]}")
    with pytest.raises(BrokerError, match="SCANSTREAM_TOPIC_REPLICATION_FACTOR=3"):
        kafka_clients.ensure_topics(kafka_bootstrap, three)


def test_missing_topics_fail_start_when_the_worker_may_not_create_them(
    kafka_bootstrap: str,
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, create_topics=False).namespaced(
        f"nc{uuid.uuid4().hex[:8]}"
    )
    with pytest.raises(BrokerError, match="SCANSTREAM_CREATE_TOPICS=false"):
        kafka_clients.ensure_topics(kafka_bootstrap, settings)
