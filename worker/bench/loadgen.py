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
(:func:`worker.bench.librdkafka.librdkafka_security` for librdkafka).

>>> GENERATORS
('librdkafka', 'kafka-python')
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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

FETCH_WAIT_MS = 50  # an answer should not sit at the broker: it is the latency
LINGER_MS = 2  # the worker's producer's linger (worker.runtime.kafka.producer)
HEADROOM = 1 << 20  # headers and batch framing on top of the largest value


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


class Publisher:
    """Sends workload events with ``event-id`` and ``sent-at`` headers.

    A client's part is :meth:`_produce` (one record, not waited for), :meth:`flush` and
    :meth:`close`; the partition, the id and the send time are chosen here, alike for both.
    """

    def __init__(self, settings: Settings, partitions: list[int]) -> None:
        self.settings = settings
        self.partitions = partitions
        self._next = 0

    def send(self, event: Event, partition: int | None = None) -> tuple[str, float]:
        """Send one event (round-robin over partitions unless given); returns (id, sent-at)."""
        if partition is None:
            partition = self.partitions[self._next % len(self.partitions)]
            self._next += 1
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        headers = event_headers(event_id, sent_at, event.content_type)
        self._produce(event, partition, headers)
        return event_id, sent_at

    def _produce(self, event: Event, partition: int, headers: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Wait until every event sent is acknowledged; BenchError if one could not be."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def answer_partitions(
    settings: Settings, partitions_for: Callable[[str], Iterable[int] | None]
) -> list[tuple[str, int]]:
    """Every (topic, partition) of the findings and the dead letters, once the client
    (``partitions_for``) knows them.

    >>> answer_partitions(Settings(findings_topic="f", dlq_topic="d"), lambda t: {1, 0})
    [('f', 0), ('f', 1), ('d', 0), ('d', 1)]
    """
    return [
        (topic, p)
        for topic in (settings.findings_topic, settings.dlq_topic)
        for p in known_partitions(partitions_for, topic)
    ]


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


class KafkaPythonPublisher(Publisher):
    """The events through the worker's own producer settings (worker.runtime.kafka)."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self._producer = kafka_clients.producer(bootstrap, settings)
        partitions_for = self._producer.partitions_for
        super().__init__(settings, known_partitions(partitions_for, settings.events_topic))

    def _produce(self, event: Event, partition: int, headers: list[tuple[str, bytes]]) -> None:
        self._producer.send(
            self.settings.events_topic,
            key=event.key,
            value=event.data,
            partition=partition,
            headers=headers,
        )

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.close(timeout=10)


class KafkaPythonReader(FindingReader):
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            max_partition_fetch_bytes=settings.max_message_bytes + HEADROOM,
            **client_security(settings),
        )
        try:
            pairs = answer_partitions(settings, self._consumer.partitions_for_topic)
            tps = [TopicPartition(topic, p) for topic, p in pairs]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
        except BaseException:
            self._consumer.close()
            raise
        super().__init__(settings, pairs)
        self._start()

    def _fetch(self) -> list[Fetched]:
        batch = self._consumer.poll(timeout_ms=20)
        return [(r.topic, r.value, r.headers or []) for rs in batch.values() for r in rs]

    def _close(self) -> None:
        self._consumer.close()


def open_clients(
    generator: str, bootstrap: str, settings: Settings
) -> tuple[Publisher, FindingReader]:
    """A phase's publisher and reader (the reader first: it reads from the beginning anyway,
    and its thread is running before the first event is sent)."""
    if generator == "librdkafka":
        from worker.bench import librdkafka

        reader: FindingReader = librdkafka.LibrdkafkaReader(bootstrap, settings)
        make: Callable[[str, Settings], Publisher] = librdkafka.LibrdkafkaPublisher
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
        from worker.bench.librdkafka import confluent

        ck = confluent()
        # version() is a bare string in recent confluent-kafka, a (string, int) pair before.
        client = ck.version()
        client = client if isinstance(client, str) else client[0]
        return f"librdkafka {ck.libversion()[0]} (confluent-kafka {client})"
    import kafka

    return f"kafka-python {kafka.__version__}"
