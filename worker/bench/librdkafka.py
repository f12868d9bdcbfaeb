"""The benchmark's load generator on librdkafka (confluent-kafka, the ``bench`` extra): a
publisher and a reader with the same settings as :mod:`worker.bench.loadgen`'s kafka-python
ones, and :func:`librdkafka_security`, the settings' TLS and SASL as librdkafka configuration.

confluent-kafka is imported only when this generator is used, so that the rest of the bench
(and ``--generator kafka-python``) runs without it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from worker.bench import BenchError
from worker.bench.loadgen import (
    FETCH_WAIT_MS,
    HEADROOM,
    LINGER_MS,
    Event,
    Fetched,
    FindingReader,
    Publisher,
    answer_partitions,
    known_partitions,
)
from worker.settings import Settings


def confluent() -> Any:
    """The confluent_kafka module; BenchError naming the fix where it is not installed."""
    try:
        import confluent_kafka
    except ImportError as exc:
        raise BenchError(
            "the benchmark's default load generator (librdkafka) needs confluent-kafka: "
            "pip install 'scanstream[bench]', or run with --generator kafka-python"
        ) from exc
    return confluent_kafka


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration for the settings' TLS and SASL, as
    :func:`worker.runtime.security.client_security` is for kafka-python. Without a CA file,
    the system's CAs are used (``probe``). OAUTHBEARER sends the configured token, valid for
    an hour from each refresh.

    >>> librdkafka_security(Settings())
    {'security.protocol': 'PLAINTEXT'}
    """
    protocol = settings.security_protocol
    conf: dict[str, Any] = {"security.protocol": protocol}
    if protocol.endswith("SSL"):
        conf["ssl.ca.location"] = settings.ssl_cafile or "probe"
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if settings.ssl_check_hostname else "none"
        )
        if settings.ssl_certfile:
            conf["ssl.certificate.location"] = settings.ssl_certfile
        if settings.ssl_keyfile:
            conf["ssl.key.location"] = settings.ssl_keyfile
    if protocol.startswith("SASL_"):
        conf["sasl.mechanism"] = settings.sasl_mechanism
        secret = settings.sasl_password
        if settings.sasl_mechanism == "OAUTHBEARER":
            conf["oauth_cb"] = lambda _config: (secret.reveal(), time.time() + 3600)
        else:
            conf["sasl.username"] = settings.sasl_username
            conf["sasl.password"] = secret.reveal()
    return conf


def _librdkafka_common(bootstrap: str, settings: Settings) -> dict[str, Any]:
    # Its log lines go through this process's logging, not straight to stderr.
    logger = logging.getLogger("worker.bench.librdkafka")
    return {"bootstrap.servers": bootstrap, "logger": logger, **librdkafka_security(settings)}


def _librdkafka_partitions(client: Any) -> Callable[[str], list[int] | None]:
    def partitions_for(topic: str) -> list[int] | None:
        found = client.list_topics(topic, timeout=10).topics.get(topic)
        return None if found is None or found.error is not None else list(found.partitions)

    return partitions_for


class LibrdkafkaPublisher(Publisher):
    """The events through librdkafka, with the worker's producer's acks, idempotence and
    linger. A failed delivery fails the next :meth:`flush`."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        ck = confluent()
        self._producer: Any = ck.Producer(
            {
                **_librdkafka_common(bootstrap, settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": LINGER_MS,
                "message.max.bytes": settings.max_message_bytes + HEADROOM,
            }
        )
        partitions_for = _librdkafka_partitions(self._producer)
        super().__init__(settings, known_partitions(partitions_for, settings.events_topic))
        self._failed: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def _produce(self, event: Event, partition: int, headers: list[tuple[str, bytes]]) -> None:
        self._producer.produce(
            self.settings.events_topic,
            key=event.key,
            value=event.data,
            partition=partition,
            headers=headers,
            on_delivery=self._delivered,
        )
        self._producer.poll(0)  # serves delivery reports, so that they do not pile up

    def flush(self) -> None:
        left = self._producer.flush(60)
        if left or self._failed:
            raise BenchError(
                f"the load generator could not deliver {left + len(self._failed)} event(s): "
                f"{self._failed[:1] or 'not acknowledged within 60 s'}"
            )

    def close(self) -> None:
        self._producer.flush(10)
        # Dropping the last reference destroys the client (close() is not in every
        # confluent-kafka version), so that it does not outlive the broker and log about it.
        self._producer = None


class LibrdkafkaReader(FindingReader):
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        ck = confluent()
        largest = settings.max_message_bytes + HEADROOM  # a dead letter carries an event
        self._consumer: Any = ck.Consumer(
            {
                **_librdkafka_common(bootstrap, settings),
                "group.id": f"bench-reader-{uuid.uuid4().hex}",  # required; never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                "fetch.message.max.bytes": largest,
                "fetch.max.bytes": max(52428800, 2 * largest),
                "receive.message.max.bytes": max(52428800, 2 * largest) + HEADROOM,
            }
        )
        try:
            pairs = answer_partitions(settings, _librdkafka_partitions(self._consumer))
            begin = ck.OFFSET_BEGINNING
            self._consumer.assign([ck.TopicPartition(t, p, begin) for t, p in pairs])
        except BaseException:
            self._consumer.close()
            raise
        super().__init__(settings, pairs)
        self._start()

    def _fetch(self) -> list[Fetched]:
        # One blocking poll, then what is already there: consume(n, timeout) would wait the
        # whole timeout for n records, and every finding would arrive that much later.
        first = self._consumer.poll(0.02)
        if first is None:
            return []
        records = [first, *self._consumer.consume(num_messages=500, timeout=0)]
        return [(r.topic(), r.value(), r.headers() or []) for r in records if r.error() is None]

    def _close(self) -> None:
        self._consumer.close()
