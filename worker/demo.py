"""``scanstream demo``: the whole product on one machine in about a minute.

Starts the local Kafka broker unless one is configured, starts a worker (in this process, its
own consumer group), publishes real DICOM samples bundled with pydicom plus two synthetic CT
phantoms (one with a lesion, to show an alert), prints each finding or dead letter with its
end-to-end latency as it arrives, and writes them as a page you can look at (``results/demo.html``,
:mod:`worker.report`); then sends two of the samples through the C-STORE gateway
with a real DICOM client (:mod:`worker.demo_gateway`) and shows their findings too; then stops
everything it started. Exit code 0 means every published event came back as exactly one finding
or dead letter, and every instance sent to the gateway was stored and answered.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom

from worker import broker
from worker.metrics import Health
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers, study_key
from worker.runtime.service import start_worker
from worker.settings import Settings

# Real samples across transfer syntaxes and photometric interpretations.
SAMPLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "693_J2KI.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "examples_rgb_color.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
)


def pydicom_test_files() -> Path:
    # Globbing the folder directly: pydicom's get_testdata_files() may try to download.
    return Path(pydicom.__file__).parent / "data" / "test_files"


def demo_events() -> list[tuple[str, bytes]]:
    base = pydicom_test_files()
    events = [(name, (base / name).read_bytes()) for name in SAMPLES if (base / name).exists()]
    # 128x128, the size the demonstration models were trained at; the lesion sits in the
    # mediastinum, where the soft-tissue window shows it.
    events.append(("phantom-normal", encode_ct(ct_slice(7, 128), study="demo", instance=1)))
    lesion = Lesion(row=60, col=64, radius=6, contrast_hu=150)
    events.append(("phantom-lesion", encode_ct(ct_slice(8, 128, lesion), study="demo", instance=2)))
    return events


def run_demo(
    settings: Settings, timeout_s: float = 150.0, report: str | Path = "results/demo.html"
) -> int:
    t_start = time.monotonic()
    started_broker = False
    if settings.bootstrap_servers:
        bootstrap = settings.bootstrap_servers
    else:
        if broker.status() is None:
            print("starting the local Apache Kafka broker (the first run downloads its jars) ...")
        info, started_broker = broker.start()  # reuses a running one, and leaves it running
        bootstrap = info.bootstrap
    print(f"broker: {bootstrap}")
    run_id = uuid.uuid4().hex[:8]
    # A fresh group that starts at the end: the demo sees its own events, not old backlog.
    settings = settings.replace(group_id=f"scanstream-demo-{run_id}", worker_id=f"demo-{run_id}")
    try:
        kafka_clients.ensure_topics(bootstrap, settings)
        start_group_at_end(bootstrap, settings)
        worker, _, health = start_worker(settings, bootstrap)
        thread = threading.Thread(target=worker.run, name="worker", daemon=True)
        thread.start()
        try:
            code = _publish_and_watch(settings, bootstrap, health, timeout_s, t_start, report)
            from worker.demo_gateway import gateway_leg

            # Its own time budget: the first leg may have used most of timeout_s already.
            return max(code, gateway_leg(settings, bootstrap, min(60.0, timeout_s)))
        finally:
            worker.stop()
            thread.join(timeout=settings.grace_period_s)
    finally:
        if started_broker:
            broker.stop()
            print("stopped the local broker")


def start_group_at_end(bootstrap: str, settings: Settings) -> dict[Any, int]:
    """Commit the events topic's end offsets for ``settings.group_id`` (a group nobody has
    joined yet), so that its worker starts after the backlog and never skips what comes later.

    The demo once started its worker with ``auto_offset_reset="latest"`` instead. That skips
    events whenever the group rebalances before its first commit of a partition: the member
    rejoins, finds no committed offset, and jumps to the end, past events it had fetched and
    not yet committed. A CI run under load once answered 5 of 19, after a
    ``RebalanceInProgressError`` on a commit, and then nothing: the pattern this explains.
    With the start committed, a rebalance replays instead.
    Returns the offsets committed.
    """
    from kafka import OffsetAndMetadata, TopicPartition

    pin = kafka_clients.consumer(bootstrap, settings)  # in the group, never subscribed
    try:
        topic = settings.events_topic
        tps = [TopicPartition(topic, p) for p in sorted(pin.partitions_for_topic(topic) or ())]
        ends: dict[Any, int] = pin.end_offsets(tps) if tps else {}
        if ends:
            pin.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
        return ends
    finally:
        pin.close(autocommit=False)


def _publish_and_watch(
    settings: Settings,
    bootstrap: str,
    health: Health,
    timeout_s: float,
    t_start: float,
    report: str | Path,
) -> int:
    deadline = time.monotonic() + timeout_s
    while not health.ready():
        if time.monotonic() > deadline:
            print("the worker never got its partitions assigned")
            return 1
        time.sleep(0.1)
    watcher = kafka_clients.consumer(bootstrap, settings, group_id=None)
    from kafka import TopicPartition

    tps = [
        TopicPartition(t, p)
        for t in (settings.findings_topic, settings.dlq_topic, settings.alerts_topic)
        for p in (watcher.partitions_for_topic(t) or {0})
    ]
    watcher.assign(tps)
    watcher.seek_to_end(*tps)
    for tp in tps:
        watcher.position(tp)  # resolve "end" now, before anything is published
    producer = kafka_clients.producer(bootstrap, settings)
    pending: dict[str, str] = {}
    sent: dict[str, bytes] = {}  # the bytes of each event, for the report's pictures
    found: dict[str, dict[str, Any]] = {}
    for name, data in demo_events():
        event_id = str(uuid.uuid4())
        producer.send(
            settings.events_topic,
            key=study_key(data),
            value=data,
            headers=event_headers(event_id, time.time(), "application/dicom"),
        )
        pending[event_id] = name
        sent[event_id] = data
    producer.flush()
    producer.close()
    total = len(pending)
    print(f"published {total} instances to {settings.events_topic}\n")
    print(
        f"{'sample':<30} {'modality':<8} {'frames':>6} {'size':>9} {'cnn p':>6} {'svm p':>6} "
        f"{'provider':<10} {'latency':>9}"
    )
    findings = 0
    alerts: list[str] = []
    names = dict(pending)
    while pending and time.monotonic() < deadline:
        for tp, records in watcher.poll(timeout_ms=200).items():
            for record in records:
                if tp.topic == settings.alerts_topic:
                    alert = json.loads(record.value)
                    alerts.append(
                        f"ALERT {alert['severity']}: {alert['label']} "
                        f"p={alert['probability']:.2f} by {alert['model']} on "
                        f"{names.get(alert['event_id'], alert['event_id'])}"
                    )
                else:
                    findings += _show(record, tp.topic == settings.dlq_topic, pending, found)
    watcher.close()
    if alerts:
        print(
            "\nThe models are demonstration models trained on synthetic CT phantoms, not "
            "clinically validated;\ntheir scores on the real samples (other modalities, other "
            "anatomy) carry no meaning."
        )
    for line in alerts:
        print(line)
    elapsed = time.monotonic() - t_start
    print(
        f"\n{total - len(pending)}/{total} events answered: {findings} findings, "
        f"{total - len(pending) - findings} dead letters, in {elapsed:.1f} s"
    )
    from worker.report import write_demo_report

    samples = [(names[e], sent[e], found[e]) for e in names if e in found]
    print(f"report: {write_demo_report(samples, report)}")
    if pending:
        print("no answer for: " + ", ".join(sorted(pending.values())))
        return 1
    return 0


def _show(
    record: object, dead: bool, pending: dict[str, str], found: dict[str, dict[str, Any]]
) -> int:
    headers = dict(record.headers or [])  # type: ignore[attr-defined]
    if dead:
        event_id = headers.get("event-id", b"").decode()
        if event_id in pending:
            reason = headers.get("scanstream.error.reason", b"?").decode()
            print(f"{pending.pop(event_id):<30} dead letter: {reason}")
        return 0
    finding = json.loads(record.value)  # type: ignore[attr-defined]
    name = pending.pop(finding["event_id"], None)
    if name is None:
        return 0
    show_finding(name, finding)
    found[finding["event_id"]] = finding
    return 1


def show_finding(name: str, finding: dict[str, Any]) -> None:
    """One row of the demo's table (see the header printed by :func:`_publish_and_watch`)."""
    # Shipped model names end in -cnn / -svm; a user's own models may not, hence the fallback.
    probs = {c["model"].rsplit("-", 1)[-1]: c["probability"] for c in finding["classifications"]}
    provider = finding["models"][0]["execution_provider"] if finding["models"] else "-"
    provider = provider.replace("ExecutionProvider", "")
    print(
        f"{name:<30} {finding['modality']:<8} {finding['frame_count']:>6} "
        f"{finding['rows']:>4}x{finding['columns']:<4} {probs.get('cnn', 0):>6.2f} "
        f"{probs.get('svm', 0):>6.2f} {provider:<10} {finding['latency_ms']:>7.1f}ms"
    )
