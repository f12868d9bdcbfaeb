"""The exporter's loop against fakes (consumer, producer, destination): every SR record ends
stored or in one dead letter, a destination that is away costs no record its attempts, and a
record refused for good does not stop the ones after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tests.unit.runtime.fakes import FakeConsumer, FakeProducer, Record
from worker.export import Failed, Rejected, SendResult, Sent, Unreachable
from worker.export.loop import Exporter, export_group
from worker.export.metrics import ExportMetrics
from worker.metrics import Health
from worker.settings import Settings

SR_TOPIC = "scans.sr"
SETTINGS = Settings(
    sr_topic=SR_TOPIC,
    export_to="dicom://PACS@127.0.0.1:11112",
    export_max_attempts=3,
    export_backoff_max_s=0.02,
)


@dataclass
class FakeDestination:
    """Answers each send with the next result of ``script(value, attempt)``."""

    script: Callable[[bytes, int], SendResult]
    name: str = "dicom://PACS@127.0.0.1:11112"
    sends: list[bytes] = field(default_factory=list)
    on_send: Callable[[], None] = lambda: None
    closed: bool = False

    def send(self, data: bytes) -> SendResult:
        self.sends.append(data)
        self.on_send()
        return self.script(data, len(self.sends))

    def close(self) -> None:
        self.closed = True


def sr_record(offset: int) -> Record:
    headers: list[tuple[str, bytes | None]] = [
        ("content-type", b"application/dicom"),
        ("finding-id", f"f{offset}".encode()),
    ]
    value = f"SR-{offset}".encode()
    return Record(SR_TOPIC, 0, offset, 1_700_000_000_000, b"study", value, headers)


def make(
    destination: FakeDestination, records: list[Record], settings: Settings = SETTINGS
) -> tuple[Exporter, FakeConsumer, FakeProducer, list[str], Health]:
    log: list[str] = []
    consumer = FakeConsumer(log, [records], topic=SR_TOPIC)
    producer = FakeProducer(log)
    health = Health()
    exporter = Exporter(
        settings,
        "fake:9092",
        destination,
        ExportMetrics(destination.name),
        health,
        consumer=consumer,
        producer=producer,
    )
    exporter.backoff_first_s = 0.001
    exporter.delivery.backoff_s = (0.001, 0.01)
    return exporter, consumer, producer, log, health


def test_each_destination_has_its_own_group() -> None:
    assert export_group(SETTINGS, "dicom://A@h:104") != export_group(SETTINGS, "dicom://B@h:104")
    assert export_group(SETTINGS.replace(export_group_id="mine"), "dicom://A@h:104") == "mine"


def test_stored_srs_are_committed_and_counted() -> None:
    destination = FakeDestination(lambda data, n: Sent(0))
    exporter, consumer, producer, _, _ = make(destination, [sr_record(0), sr_record(1)])
    exporter.run(drain=True)
    assert destination.sends == [b"SR-0", b"SR-1"] and not producer.sent
    assert consumer.committed_offsets[consumer.tp].offset == 2 and exporter.sent == 2
    assert b"scanstream_export_sent_total 2.0" in exporter.metrics.render()


def test_a_rejected_sr_is_a_dead_letter_with_its_status_and_the_next_goes_on() -> None:
    def script(data: bytes, n: int) -> SendResult:
        return Rejected(0xA900, "dataset does not match SOP class") if data == b"SR-0" else Sent(0)

    destination = FakeDestination(script)
    exporter, consumer, producer, _, _ = make(destination, [sr_record(0), sr_record(1)])
    exporter.run(drain=True)
    [dead] = producer.acked("scans.dlq")
    headers = dict(dead.headers)
    assert dead.value == b"SR-0" and dead.key == b"study"
    assert headers["finding-id"] == b"f0" and headers["content-type"] == b"application/dicom"
    assert headers["scanstream.error.reason"] == b"export_rejected"
    assert b"0xa900" in (headers["scanstream.error.detail"] or b"")
    assert headers["scanstream.error.topic"] == SR_TOPIC.encode()
    assert destination.sends == [b"SR-0", b"SR-1"]  # sent once: a refusal is not retried
    assert consumer.committed_offsets[consumer.tp].offset == 2
    assert b'scanstream_export_dead_letters_total{reason="export_rejected"} 1.0' in (
        exporter.metrics.render()
    )


def test_temporary_failures_are_retried_within_the_records_budget() -> None:
    def script(data: bytes, n: int) -> SendResult:
        if data == b"SR-0":
            return Failed(0xA700, "out of resources")  # every time: out of attempts
        return Sent(0) if n >= 5 else Failed(0xA700, "out of resources")  # passes on try 2

    destination = FakeDestination(script)
    exporter, consumer, producer, _, _ = make(destination, [sr_record(0), sr_record(1)])
    exporter.run(drain=True)
    assert destination.sends.count(b"SR-0") == SETTINGS.export_max_attempts == 3
    assert destination.sends.count(b"SR-1") == 2
    [dead] = producer.acked("scans.dlq")
    assert dict(dead.headers)["scanstream.error.reason"] == b"export_failed"
    assert consumer.committed_offsets[consumer.tp].offset == 2 and exporter.sent == 1


def test_an_unreachable_destination_pauses_the_export_without_charging_the_record() -> None:
    seen: list[tuple[bool, str, bool]] = []
    health_box: list[Health] = []

    def script(data: bytes, n: int) -> SendResult:
        return Unreachable("connection refused") if n <= 10 else Sent(0)

    def on_send() -> None:
        if health_box:
            ok, why = health_box[0].status()
            seen.append((ok, why, health_box[0].ready()))

    destination = FakeDestination(script, on_send=on_send)
    exporter, consumer, producer, log, health = make(destination, [sr_record(0)])
    health_box.append(health)
    exporter.run(drain=True)
    # Ten refused connections, more than the record's three attempts: still stored, no letter.
    assert len(destination.sends) == 11 and not producer.sent
    assert consumer.committed_offsets[consumer.tp].offset == 1
    # While it was away: alive (a restart would not help), saying why, and not ready.
    ok, why, ready = seen[-1]
    assert ok and why.startswith("waiting: export destination dicom://PACS@") and not ready
    assert "connection refused" in why
    assert health.status() == (True, "ok")
    assert "pause" in log and "resume" in log  # it stayed in its group while it waited
    text = exporter.metrics.render()
    assert b'scanstream_export_failures_total{reason="unreachable"} 10.0' in text
    assert b'scanstream_export_destination_up{destination="dicom://PACS@127.0.0.1:11112"} 1.0' in (
        text
    )


def test_a_partition_revoked_while_waiting_is_left_to_its_next_owner() -> None:
    box: list[FakeConsumer] = []

    def script(data: bytes, n: int) -> SendResult:
        if n == 3:
            box[0].revoke()
        return Unreachable("connection refused")

    destination = FakeDestination(script)
    exporter, consumer, producer, _, _ = make(destination, [sr_record(0), sr_record(1)])
    box.append(consumer)
    _run_until(exporter, lambda: len(destination.sends) >= 3)
    assert destination.sends == [b"SR-0"] * 3  # SR-1 was never tried: not ours any more
    assert not consumer.committed_offsets and not producer.sent


def test_stopping_while_the_destination_is_away_commits_nothing_unsent() -> None:
    box: list[Exporter] = []

    def script(data: bytes, n: int) -> SendResult:
        if n == 2:
            box[0].stop()
        return Unreachable("timed out")

    destination = FakeDestination(script)
    exporter, consumer, producer, _, _ = make(destination, [sr_record(0)])
    box.append(exporter)
    exporter.run()
    assert len(destination.sends) == 2 and not consumer.committed_offsets and not producer.sent


def _run_until(exporter: Exporter, done: Callable[[], bool]) -> None:
    """Run the loop, stopping it once ``done()`` holds (checked on every poll)."""
    consumer = exporter.consumer
    previous = consumer.on_poll

    def on_poll() -> None:
        previous()
        if done():
            exporter.stop()

    consumer.on_poll = on_poll
    exporter.run()
