"""Kafka client construction and topic provisioning, in one place.

Size limits are raised together (topic, producer, consumer) so that an event up to the
configured ``max_message_bytes`` travels end to end; the local broker allows 32 MiB.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from worker import broker
from worker.errors import BrokerError, ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)
_HEADROOM = 1024 * 1024  # record overhead and headers on top of the value limit


def resolve_bootstrap(settings: Settings, start_local: bool = True) -> tuple[str, bool]:
    """The broker address to use, starting the local broker when none is configured.

    Returns (bootstrap, started_here).
    """
    if settings.bootstrap_servers:
        return settings.bootstrap_servers, False
    running = broker.status()
    if running is not None:
        return running.bootstrap, False
    if not start_local:
        raise ConfigError(
            "no Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS (or "
            "SCANSTREAM_BOOTSTRAP_SERVERS), or run `scanstream broker start`"
        )
    info, started = broker.start()
    return info.bootstrap, started


def ensure_topics(bootstrap: str, settings: Settings, partitions: int = 3) -> None:
    """Create the events, findings, alerts and dead-letter topics if they are missing."""
    names = [
        settings.events_topic,
        settings.findings_topic,
        settings.alerts_topic,
        settings.dlq_topic,
    ]
    configs = {"max.message.bytes": str(settings.max_message_bytes + _HEADROOM)}
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    except Exception as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(n, partitions, 1, topic_configs=configs) for n in names if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        admin.close()


def producer(bootstrap: str, settings: Settings, **extra: Any) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        # A restarted broker is found again within seconds, not the 30 s default backoff.
        reconnect_backoff_max_ms=2000,
        max_request_size=settings.max_message_bytes + _HEADROOM,
        **extra,
    )


def consumer(
    bootstrap: str, settings: Settings, topics: Iterable[str] = (), **extra: Any
) -> KafkaConsumer:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.max_poll_records,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_partition_fetch_bytes": settings.max_message_bytes + _HEADROOM,
        "fetch_max_bytes": max(52428800, 2 * (settings.max_message_bytes + _HEADROOM)),
        "client_id": settings.worker_id,
        # A killed worker's partitions move on after 10 s instead of 45 s (never longer than
        # the poll interval, which the client requires to be the larger).
        "session_timeout_ms": min(10000, settings.max_poll_interval_ms),
        "heartbeat_interval_ms": min(2000, settings.max_poll_interval_ms // 3),
        "reconnect_backoff_max_ms": 2000,
    }
    kwargs.update(extra)
    c = KafkaConsumer(**kwargs)
    topics = list(topics)
    if topics:
        c.subscribe(topics)
    return c
