"""The benchmark's load generator: the publisher of workload events and the reader of findings.

Two Kafka clients can play it (``scanstream bench --generator``):

* ``librdkafka`` (the default): confluent-kafka, the ``bench`` extra. Its network work runs in C
  threads, outside this process's interpreter lock.
* ``kafka-python``: the worker's own client, as the benchmark used until 2026-12-07.

Why librdkafka is the default: on the 2-core machine the load generator shares the cores with
the worker under test and the broker. In production, scanners and gateways publish from other
machines, so the generator's CPU should not count against the worker.

Measured at 112 events/s (half the compute limit), six interleaved rounds each:

* The kafka-python generator used 2.4 to 2.6 ms of CPU per event. librdkafka used 0.52 to 0.60.
* Cores busy in all went from 1.41 to 1.23.
* The worker's p50 went from 26.1 to 22.2 ms (median of rounds; lower in 6 of 6 rounds).
* Its p99 went from 52.9 to 44.5 ms (lower in 5 of 6).

The worker is the same in both. Reproduce with
``python -m worker.bench.ab --rate 112 kp:kafka-python='{}' rd:librdkafka='{}'``.

Both generators use the same settings: acks from all replicas, idempotence and a 2 ms linger for
the events, as the worker's producer; findings and dead letters read from the beginning of every
partition with a fetch that waits at most 50 ms at the broker; and the same TLS and SASL settings
(:func:`librdkafka_security` for librdkafka).

>>> GENERATORS
('librdkafka', 'kafka-python')
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition

from worker.bench import BenchError
from worker.contract import DICOM_TYPE, header
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers
from worker.runtime.security import client_security
from worker.settings import Settings

GENERATORS = ("librdkafka", "kafka-python")
DEFAULT_GENERATOR = GENERATORS[0]

#: A finding or dead letter as a client hands it over: (topic, value, headers).
Fetched = tuple[str, bytes | None, Sequence[tuple[str, bytes | None]]]

_FETCH_WAIT_MS = 50  # an answer should not sit at the broker: it is the latency
_LINGER_MS = 2  # the worker's producer's linger (worker.runtime.kafka.producer)
_HEADROOM = 1 << 20  # headers and batch framing on top of the largest value


@dataclass(frozen=True)
class Event:
    """One workload event: the record value (DICOM bytes, or the JSON document of a reference
    event: :mod:`worker.bench.references`), its partitioning key, the frames it holds and the
    content-type header that tells the worker which of the two forms it is."""

    name: str
    data: bytes
    key: bytes | None
    frames: int
    content_type: str = DICOM_TYPE


@dataclass(frozen=True)
class Arrival:
    """A finding (or dead letter) as the reader saw it."""

    arrived: float  # time.time() when the reader's poll returned it
    frames: int
    worker_id: str
    worker_latency_ms: float | None
    compute_ms: float | None  # the finding's timings_ms summed: decode to building it
    dead: bool = False


def known_partitions(
    partitions_for: Callable[[str], Iterable[int] | None], topic: str, timeout_s: float = 30.0
) -> list[int]:
    """``topic``'s partitions, once the client (``partitions_for``) knows them.

    A topic created a moment before (each phase creates its own) may not be in the broker's
    metadata yet, and kafka-python then knows no partition of it: the reader once took
    partition 0 alone for it, and would then miss every finding that went to another. The
    likely cause of a phase seen twice on 2026-12-07 (the fifth of a run each time, while the
    broker deleted the earlier phases' topics): its warm-up's six findings, which share one key
    and so one partition, went unanswered for 180 s, though the worker had committed all six
    events and the findings topic held six records (:mod:`worker.bench.diagnose`). A reader that
    misses answers now also says which partitions it reads.

    >>> answers = [set(), {2, 0, 1}]
    >>> known_partitions(lambda topic: answers.pop(0), "t")
    [0, 1, 2]
    """
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = partitions_for(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise BenchError(f"the topic {topic} has no partitions known after {timeout_s:.0f} s")
        time.sleep(0.05)


class Publisher(Protocol):
    """Sends workload events with ``event-id`` and ``sent-at`` headers."""

    partitions: list[int]

    def send(self, event: Event, partition: int | None = None) -> tuple[str, float]:
        """Send one event (round-robin over partitions unless given); returns (id, sent-at)."""
        ...

    def flush(self) -> None:
        """Wait until every event sent is acknowledged; BenchError if one could not be."""
        ...

    def close(self) -> None: ...


class FindingReader:
    """Reads a phase's findings and dead letters from the beginning, in a background thread.

    A client's part is :meth:`_fetch` (one short poll) and :meth:`_close`; the bookkeeping,
    the arrival stamps and the waiting are shared, so both generators measure alike.
    """

    def __init__(self, settings: Settings, partitions: Sequence[tuple[str, int]]) -> None:
        self._findings, self._dlq = settings.findings_topic, settings.dlq_topic
        self.reads = ", ".join(f"{topic}[{p}]" for topic, p in partitions)
        self._seen: dict[str, Arrival] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-reader", daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def _fetch(self) -> list[Fetched]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._fetch()
                now = time.time()
                arrivals = [self._parse(topic, value, hs, now) for topic, value, hs in batch]
                if arrivals:
                    with self._cond:
                        self._seen.update(a for a in arrivals if a is not None)
                        self._cond.notify_all()
        finally:
            self._close()

    def _parse(
        self,
        topic: str,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        now: float,
    ) -> tuple[str, Arrival] | None:
        if topic == self._dlq:
            raw = header(list(headers), "event-id")
            return None if raw is None else (raw.decode(), Arrival(now, 0, "", None, None, True))
        doc = json.loads(value or b"{}")
        compute_ms = float(sum(doc["timings_ms"].values()))
        found = Arrival(now, doc["frame_count"], doc["worker_id"], doc["latency_ms"], compute_ms)
        return doc["event_id"], found

    def wait_for(
        self, ids: Sequence[str], timeout_s: float, check: Callable[[], None] | None = None
    ) -> dict[str, Arrival]:
        """The arrivals of ``ids``; raises :class:`BenchError` if any is missing at the timeout.

        ``check`` runs every half second while waiting (it raises if the worker died, so that a
        dead worker fails the phase at once instead of at the timeout).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                missing = [i for i in ids if i not in self._seen]
                if not missing:
                    return {i: self._seen[i] for i in ids}
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise BenchError(
                        f"{len(missing)}/{len(ids)} events unanswered after {timeout_s:.0f} s "
                        f"(the reader reads {self.reads}; its thread alive: "
                        f"{self._thread.is_alive()})"
                    )
                self._cond.wait(min(left, 0.5))
            if check is not None:
                check()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# -- kafka-python -----------------------------------------------------------------------------


class KafkaPythonPublisher:
    """The events through the worker's own producer settings (worker.runtime.kafka)."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.settings = settings
        self._producer = kafka_clients.producer(bootstrap, settings)
        topic = settings.events_topic
        self.partitions = known_partitions(self._producer.partitions_for, topic)
        self._next = 0

    def send(self, event: Event, partition: int | None = None) -> tuple[str, float]:
        if partition is None:
            partition = self.partitions[self._next % len(self.partitions)]
            self._next += 1
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        self._producer.send(
            self.settings.events_topic,
            key=event.key,
            value=event.data,
            partition=partition,
            headers=event_headers(event_id, sent_at, event.content_type),
        )
        return event_id, sent_at

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close(timeout=10)


class KafkaPythonReader(FindingReader):
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            max_partition_fetch_bytes=settings.max_message_bytes + _HEADROOM,
            **client_security(settings),
        )
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in (settings.findings_topic, settings.dlq_topic)
                for p in known_partitions(self._consumer.partitions_for_topic, topic)
            ]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
        except BaseException:
            self._consumer.close()
            raise
        super().__init__(settings, [(tp.topic, tp.partition) for tp in tps])
        self._start()

    def _fetch(self) -> list[Fetched]:
        batch = self._consumer.poll(timeout_ms=20)
        return [(r.topic, r.value, r.headers or []) for rs in batch.values() for r in rs]

    def _close(self) -> None:
        self._consumer.close()


# -- librdkafka (confluent-kafka) -------------------------------------------------------------


def _confluent() -> Any:
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


class LibrdkafkaPublisher:
    """The events through librdkafka, with the worker's producer's acks, idempotence and
    linger. A failed delivery fails the next :meth:`flush`."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        ck = _confluent()
        self.settings = settings
        self._producer: Any = ck.Producer(
            {
                **_librdkafka_common(bootstrap, settings),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": _LINGER_MS,
                "message.max.bytes": settings.max_message_bytes + _HEADROOM,
            }
        )
        topic = settings.events_topic
        self.partitions = known_partitions(_librdkafka_partitions(self._producer), topic)
        self._next = 0
        self._failed: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def send(self, event: Event, partition: int | None = None) -> tuple[str, float]:
        if partition is None:
            partition = self.partitions[self._next % len(self.partitions)]
            self._next += 1
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        self._producer.produce(
            self.settings.events_topic,
            key=event.key,
            value=event.data,
            partition=partition,
            headers=event_headers(event_id, sent_at, event.content_type),
            on_delivery=self._delivered,
        )
        self._producer.poll(0)  # serves delivery reports, so that they do not pile up
        return event_id, sent_at

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
        ck = _confluent()
        largest = settings.max_message_bytes + _HEADROOM  # a dead letter carries an event
        self._consumer: Any = ck.Consumer(
            {
                **_librdkafka_common(bootstrap, settings),
                "group.id": f"bench-reader-{uuid.uuid4().hex}",  # required; never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": _FETCH_WAIT_MS,
                "fetch.message.max.bytes": largest,
                "fetch.max.bytes": max(52428800, 2 * largest),
                "receive.message.max.bytes": max(52428800, 2 * largest) + _HEADROOM,
            }
        )
        partitions_for = _librdkafka_partitions(self._consumer)
        try:
            pairs = [
                (topic, p)
                for topic in (settings.findings_topic, settings.dlq_topic)
                for p in known_partitions(partitions_for, topic)
            ]
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


def open_clients(
    generator: str, bootstrap: str, settings: Settings
) -> tuple[Publisher, FindingReader]:
    """A phase's publisher and reader (the reader first: it reads from the beginning anyway,
    and its thread is running before the first event is sent)."""
    if generator == "librdkafka":
        reader: FindingReader = LibrdkafkaReader(bootstrap, settings)
        make: Callable[[str, Settings], Publisher] = LibrdkafkaPublisher
    elif generator == "kafka-python":
        reader, make = KafkaPythonReader(bootstrap, settings), KafkaPythonPublisher
    else:
        raise BenchError(f"unknown load generator {generator!r}: use {' or '.join(GENERATORS)}")
    try:
        return make(bootstrap, settings), reader
    except BaseException:
        reader.close()
        raise


def describe(generator: str) -> str:
    """The generator's client and version, for the bench's JSON.

    >>> describe("kafka-python").startswith("kafka-python ")
    True
    """
    if generator == "librdkafka":
        ck = _confluent()
        # version() is a bare string in recent confluent-kafka, a (string, int) pair before.
        client = ck.version()
        client = client if isinstance(client, str) else client[0]
        return f"librdkafka {ck.libversion()[0]} (confluent-kafka {client})"
    import kafka

    return f"kafka-python {kafka.__version__}"
