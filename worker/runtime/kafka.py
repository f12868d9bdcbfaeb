"""Kafka client construction, the start-up probe and topic provisioning, in one place.

Size limits are raised together (topic, producer, consumer) so that an event up to the
configured ``max_message_bytes`` travels end to end; the local broker allows 32 MiB. The
dead-letter topic allows one more MiB than the events topic, so that a record that reached the
events topic still fits there with the error headers added.

Nulls: Kafka carries records whose value, key or header values are null, and a dead letter must
keep them so. kafka-python's ``send()`` refuses a record with neither key nor value and header
values that are not bytes, although its record builder writes both. :data:`NULL` (as a value)
and :data:`NULL_HEADER` (as a header value) pass those checks, and :class:`NullableSerializer`,
which ``send()`` calls after its checks and before the record is built, turns them into nulls.

One more obstacle, in kafka-python 3.0: ``ProducerBatch.try_append`` appends the record and
only then sums ``len()`` of its header values for the future's metadata, so a null header value
raises TypeError after the record is already in the batch: the record is sent, but its future
is lost, and a retry would send it twice. :func:`_null_safe_try_append` is that method with a
null-safe sum, installed only over the exact signature it was written against; elsewhere
:data:`NULL_HEADERS_SUPPORTED` is False and :func:`wire_headers` sends a null header value as
empty bytes and lists its position in ``scanstream.null-headers`` instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as KafkaErrors
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata
from kafka.producer.producer_batch import ProducerBatch
from kafka.serializer import Serializer

from worker import broker
from worker.errors import BrokerError, ConfigError
from worker.runtime import kafka_recv as kafka_recv  # installs bigger socket reads
from worker.runtime import security
from worker.runtime.connect import login_hint
from worker.runtime.connect import wait_for_broker as wait_for_broker
from worker.runtime.membership import guard_join
from worker.settings import Settings

log = logging.getLogger(__name__)
_HEADROOM = 1024 * 1024  # record overhead and headers on top of the value limit


class _Null:
    """The null value of a record (see the module docstring)."""

    def __repr__(self) -> str:
        return "NULL"


class _NullHeader(bytes):
    """A header value that goes on the wire as null (a bytes subclass, for ``send()``)."""


NULL: Final = _Null()
NULL_HEADER: Final = _NullHeader()


class NullableSerializer(Serializer):  # type: ignore[misc]
    """Values pass through as bytes; :data:`NULL` becomes a null value and every
    :data:`NULL_HEADER` in the (per-send) header list a null header value."""

    def serialize(self, topic: str, headers: list[tuple[str, bytes | None]], data: Any) -> Any:
        for i, (name, value) in enumerate(headers):
            if value is NULL_HEADER:
                headers[i] = (name, None)
        return None if data is NULL else data


def _null_safe_try_append(
    self: Any, timestamp_ms: Any, key: Any, value: Any, headers: Any, now: Any = None
) -> Any:
    """kafka-python 3.0's ``ProducerBatch.try_append``, with a null-safe header size."""
    metadata = self.records.append(timestamp_ms, key, value, headers)
    if metadata is None:
        return None
    now = time.monotonic() if now is None else now
    self.max_record_size = max(self.max_record_size, metadata.size)
    self.last_append = now
    header_size = sum(len(k.encode("utf-8")) + len(v or b"") for k, v in headers) if headers else -1
    future = FutureRecordMetadata(
        self.produce_future,
        metadata.offset,
        metadata.timestamp,
        metadata.crc,
        len(key) if key is not None else -1,
        len(value) if value is not None else -1,
        header_size,
    )
    self._record_futures.append(future)
    return future


def _install_null_safe_try_append() -> bool:
    params = list(inspect.signature(ProducerBatch.try_append).parameters)
    if params != ["self", "timestamp_ms", "key", "value", "headers", "now"]:
        return False
    if not hasattr(ProducerBatch, "_scanstream_original_try_append"):
        ProducerBatch._scanstream_original_try_append = ProducerBatch.try_append
        ProducerBatch.try_append = _null_safe_try_append
    return True


NULL_HEADERS_SUPPORTED: Final = _install_null_safe_try_append()


def _install_socket_closing_connect() -> None:
    """kafka-python 3.0's ``KafkaNetSocket.sock_connect`` raises on a refused or timed-out
    connect without closing the socket it made, leaking one per attempt while a broker is away
    (a gateway waiting out a broker restart makes hundreds). Close it on the way out."""
    try:
        from kafka.net.inet import KafkaNetSocket
    except ImportError:
        return
    original = getattr(KafkaNetSocket, "sock_connect", None)
    if original is None or getattr(original, "_scanstream", False):
        return

    async def sock_connect(self: Any, net: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, net, sock, *args, **kwargs)
        except BaseException:
            sock.close()
            raise

    sock_connect._scanstream = True  # type: ignore[attr-defined]
    KafkaNetSocket.sock_connect = sock_connect


_install_socket_closing_connect()

NULL_HEADERS = "scanstream.null-headers"


def wire_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """A fresh header list for one ``send()``, nulls as :data:`NULL_HEADER` (the serializer
    rewrites the list in place, so each send needs its own).

    >>> wire_headers([("a", None), ("b", b"1")])[1]
    ('b', b'1')
    """
    out: list[tuple[str, bytes]] = []
    nulls: list[str] = []
    for i, (name, value) in enumerate(headers):
        if value is None and not NULL_HEADERS_SUPPORTED:
            nulls.append(str(i))
            out.append((name, b""))
        else:
            out.append((name, NULL_HEADER if value is None else value))
    if nulls:
        out.append((NULL_HEADERS, ",".join(nulls).encode()))
    return out


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


def admin_client(bootstrap: str, settings: Settings, **extra: Any) -> KafkaAdminClient:
    """An admin client with the security settings; BrokerError (naming the fix) if it cannot."""
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=15000,
            bootstrap_timeout_ms=int(settings.connect_timeout_s * 1000),
            **security.client_security(settings),
            **extra,
        )
    except (
        KafkaErrors.SaslAuthenticationFailedError,
        KafkaErrors.UnsupportedSaslMechanismError,
    ) as exc:
        raise BrokerError(f"cannot log in to Kafka at {bootstrap}: {login_hint(settings)}") from exc
    except Exception as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc


def topic_names(settings: Settings) -> list[str]:
    """The worker's topics: events in; findings, alerts, dead letters (and SRs, if on) out."""
    return [
        settings.events_topic,
        settings.findings_topic,
        settings.alerts_topic,
        settings.dlq_topic,
        *([settings.sr_topic] if settings.sr_topic else []),
    ]


def ensure_topics(
    bootstrap: str,
    settings: Settings,
    partitions: int = 3,
    also: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
) -> None:
    """Create the events, findings, alerts and dead-letter topics (and ``also``, e.g. the
    gateway's studies topic) if they are missing, with the configured replication factor and
    ``min.insync.replicas``; with ``SCANSTREAM_CREATE_TOPICS=false`` only check that they exist
    and are visible. ``only`` replaces the worker's topics (the exporter needs just its own)."""
    names = [*(topic_names(settings) if only is None else only), *also]
    limit = settings.max_message_bytes + _HEADROOM
    admin = admin_client(bootstrap, settings)
    try:
        existing = set(admin.list_topics())
        absent = [n for n in names if n not in existing]
        if absent and not settings.create_topics:
            raise BrokerError(
                f"the topics {', '.join(absent)} do not exist at {bootstrap} (or this client may "
                "not Describe them) and SCANSTREAM_CREATE_TOPICS=false; create them (see the "
                "README's ACL guide) or grant Describe on them"
            )
        missing = [
            NewTopic(
                n,
                partitions,
                settings.topic_replication_factor,
                topic_configs={
                    "max.message.bytes": str(limit + (_HEADROOM if n == settings.dlq_topic else 0)),
                    "min.insync.replicas": str(settings.topic_min_insync_replicas),
                },
            )
            for n in absent
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    except BrokerError:
        raise
    except KafkaErrors.InvalidReplicationFactorError as exc:
        raise BrokerError(
            f"cannot create the topics at {bootstrap} with "
            f"SCANSTREAM_TOPIC_REPLICATION_FACTOR={settings.topic_replication_factor} "
            f"({exc}); set it to at most the number of brokers"
        ) from exc
    except KafkaErrors.AuthorizationError as exc:
        raise BrokerError(
            f"not allowed to create the topics {', '.join(names)} at {bootstrap} "
            f"({type(exc).__name__}); create them beforehand and set "
            "SCANSTREAM_CREATE_TOPICS=false, or grant this principal Create on them"
        ) from exc
    except Exception as exc:
        raise BrokerError(
            f"cannot create or list the topics {', '.join(names)} at {bootstrap} "
            f"({type(exc).__name__}: {exc}); create them beforehand or allow this client to"
        ) from exc
    finally:
        admin.close()


def producer(bootstrap: str, settings: Settings, **extra: Any) -> KafkaProducer:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        # A restarted broker is found again within seconds, not the 30 s default backoff.
        "reconnect_backoff_max_ms": 2000,
        "max_request_size": settings.max_message_bytes + 2 * _HEADROOM,  # dead letters too
        "value_serializer": NullableSerializer(),
        **security.client_security(settings),
    }
    return KafkaProducer(**{**kwargs, **extra})


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
        # kafka-python's default (305 s) lets one lost SyncGroup answer stall the member for
        # five minutes (seen: joined, never assigned). 30 s, as the Java client: a request that
        # gets no answer is retried; JoinGroup still waits up to the rebalance timeout + 5 s.
        "request_timeout_ms": 30000,
        **security.client_security(settings),
    }
    kwargs.update(extra)
    c = guard_join(KafkaConsumer(**kwargs))
    topics = list(topics)
    if topics:
        subscribe(c, topics)
    return c


def subscribe(consumer: KafkaConsumer, topics: Iterable[str], listener: Any = None) -> None:
    """Subscribe ``consumer`` to ``topics`` with their metadata known before it joins its group.

    Before subscribing: a group leader without the topics' partitions assigns nothing, and the
    member waits unassigned until some later rejoin. After subscribing, one more metadata
    round trip: kafka-python's coordinator notes the subscribed topics' partitions only when
    metadata arrives with the subscription in place, and a leader that joined before that
    (every first member did, measured in the fault tests' debug logs) rejoined at once when it
    arrived: two rebalances for each worker that starts, the second one the group's members
    all take part in.

    >>> from unittest import mock
    >>> c = mock.Mock()
    >>> subscribe(c, ["scans.events"])
    >>> [call[0] for call in c.method_calls]
    ['partitions_for_topic', 'subscribe', 'topics']
    """
    topics = list(topics)
    for topic in topics:
        consumer.partitions_for_topic(topic)
    consumer.subscribe(topics, listener=listener)
    consumer.topics()  # a blocking metadata update, which the coordinator sees subscribed


def group_caught_up(consumer: Any, topic: str) -> bool:
    """Whether the consumer's group has committed every partition of ``topic`` to its end
    offset (drain mode's stop condition, for the worker and the exporter alike).

    Group-wide rather than per assignment: with several members draining together, one that
    never got a partition (the others were faster) must still stop. Bounded: kafka-python
    retries an unanswered OffsetFetch without limit; a lookup that times out means "not known
    to be caught up", asked again after the next poll."""
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return False
    ends = consumer.end_offsets(tps)
    try:
        return all((consumer.committed(tp, timeout_ms=10_000) or 0) >= ends[tp] for tp in tps)
    except KafkaErrors.KafkaTimeoutError:
        return False


def partition_lags(
    consumer: Any, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Records between our position and the high watermark, for each of ``partitions`` still
    assigned to ``consumer`` whose both ends are known (the lag gauges of the worker and the
    exporter).

    Bounded: a position not yet known (just assigned) is fetched from the group coordinator, and
    kafka-python waits for it without limit by default. A partition revoked between the check
    and the lookup is left out.
    """
    owned = consumer.assignment()
    lags: dict[TopicPartition, int] = {}
    for tp in set(partitions) & owned:
        try:
            high, position = consumer.highwater(tp), consumer.position(tp, timeout_ms=1000)
        except Exception:  # noqa: BLE001 - revoked between the check and the call
            continue
        if high is not None and position is not None:
            lags[tp] = max(0, high - position)
    return lags
