"""End-to-end phases against a real broker: saturation throughput and latency under paced load.

Each phase gets topics and a consumer group of its own (uuid suffix), so that no phase sees
another's events, and runs the worker under test as a separate OS process, as production does:
``python -m worker.cli run --processes P`` (the real worker) or ``python -m worker.bench.naive``.
This process publishes the events and reads the findings back (:mod:`worker.bench.loadgen`:
librdkafka by default, or kafka-python; the reader is a background thread that stamps each
finding with its arrival time).

Before measuring, :func:`warm_up` sends one event to every partition, round after round, until
findings come back from as many distinct workers as there are processes: models are loaded,
every process holds partitions and the group has settled, so no phase measures start-up.

* Saturation (:func:`saturate`): ``n`` events are published as fast as the producer goes, and the
  rate is that of the backlog they leave (:func:`backlog_rate`: frames answered from the first
  finding after the last send to the last finding); ``img_s_whole_burst`` is frames answered /
  (arrival of the last finding - first send). Events are spread over the partitions
  round-robin, so that two processes get equal shares.
* Latency (:func:`paced`): open loop. Event ``i`` is sent at ``start + i / rate`` whatever the
  worker does (:func:`pacing_schedule`); a late send is not skipped, so overload shows up as
  latency instead of being hidden by a publisher that waits for answers. Latency is the
  finding's arrival at the reader minus the event's send time, both from this process's clock:
  it includes both produce hops, the broker and the reader's fetch. The worker's own
  ``latency_ms`` (sent-at header, millisecond precision, to building the finding) is reported
  next to it as ``worker_*``.

A one-process real worker also serves ``/metrics``: its stage timings, scraped before and after
each measurement, say where the time went (``worker_stage_means``).

>>> pacing_schedule(rate=4.0, count=3)
[0.0, 0.25, 0.5]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker.bench import BenchError
from worker.bench.cpu import CpuMeter, own_cpu_s, tree_cpu_s
from worker.bench.diagnose import diagnose
from worker.bench.loadgen import (
    DEFAULT_GENERATOR,
    Arrival,
    Event,
    FindingReader,
    Publisher,
    open_clients,
)
from worker.bench.report import latency_summary
from worker.bench.scrape import stage_means
from worker.broker import free_port
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

#: Partitions of the bench topics: divisible by 1 and 2, so two processes get equal shares.
PARTITIONS = 6


def pacing_schedule(rate: float, count: int) -> list[float]:
    """Send offsets (s from the start) of ``count`` events at ``rate`` per second."""
    if rate <= 0 or count < 0:
        raise ValueError(f"rate must be > 0 and count >= 0, got {rate}, {count}")
    return [i / rate for i in range(count)]


def phase_settings(base: Settings, bootstrap: str, tag: str) -> Settings:
    """``base`` with topics, group and worker id of their own for one phase."""
    run = f"{tag}-{uuid.uuid4().hex[:8]}"
    settings = base.namespaced(f"bench.{run}").replace(
        bootstrap_servers=bootstrap, worker_id=f"bench-{run}"
    )
    kafka_clients.ensure_topics(bootstrap, settings, partitions=PARTITIONS)
    return settings


def delete_topics(bootstrap: str, settings: Settings) -> None:
    """Best effort: a phase's topics hold hundreds of MB of events that nobody needs later."""
    topics = [settings.events_topic, settings.findings_topic, settings.alerts_topic]
    with contextlib.suppress(Exception):
        admin = kafka_clients.admin_client(bootstrap, settings)
        with contextlib.closing(admin):
            admin.delete_topics([*topics, settings.dlq_topic])


class WorkerProcess:
    """The worker under test as a child process with the phase's settings in its environment.

    ``extra_env`` goes in last: what a phase needs beyond topics and group (the reference phase's
    ``SCANSTREAM_REFERENCE_ALLOW``), without a Settings field per phase.
    """

    def __init__(
        self,
        settings: Settings,
        processes: int,
        naive: bool,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        names = ("events_topic", "findings_topic", "alerts_topic", "dlq_topic", "group_id")
        env = {f"SCANSTREAM_{n.upper()}": str(getattr(settings, n)) for n in names}
        env = {**os.environ, **env, "SCANSTREAM_WORKER_ID": settings.worker_id}
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers or ""
        # One process serves /metrics (its stage timings explain the figures); N would clash.
        self.metrics_port = free_port() if processes == 1 and not naive else 0
        env["SCANSTREAM_METRICS_PORT"] = str(self.metrics_port)
        env.update(extra_env or {})
        if naive:
            cmd = [sys.executable, "-m", "worker.bench.naive"]
        else:
            cmd = [sys.executable, "-m", "worker.cli", "run", "--processes", str(processes)]
        self.processes = processes
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def pids(self) -> list[int]:
        return [self._proc.pid]

    def check(self) -> None:
        if self._proc.poll() is not None:
            raise BenchError(f"the worker exited with {self._proc.returncode}: {self.log_tail()}")

    def scrape(self) -> str:
        """The worker's ``/metrics`` text, or "" when it serves none."""
        if not self.metrics_port:
            return ""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
        return ""

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:]

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the worker drains and leaves its group), SIGKILL if it does not exit."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class Workers(Protocol):
    """The worker(s) under test in a phase: one :class:`WorkerProcess`, or several
    (:class:`worker.bench.scaling.WorkerGroup`)."""

    @property
    def processes(self) -> int: ...

    def pids(self) -> list[int]: ...

    def check(self) -> None: ...

    def scrape(self) -> str: ...

    def log_tail(self) -> str: ...


@dataclass(frozen=True)
class Phase:
    """One phase's publisher, reader and worker under test."""

    pub: Publisher
    reader: FindingReader
    worker: Workers
    broker_pid: int | None = None  # a broker this run started, for its CPU time

    def cpu_meter(self) -> CpuMeter:
        """CPU by role: the worker process(es), the broker, and this benchmark process."""
        broker_pid = self.broker_pid
        return CpuMeter(
            {
                "worker": lambda: tree_cpu_s(self.worker.pids()),
                "broker": lambda: None if broker_pid is None else tree_cpu_s([broker_pid]),
                "bench": own_cpu_s,
            }
        )

    def wait_for(self, ids: Sequence[str], timeout_s: float) -> dict[str, Arrival]:
        try:
            return self.reader.wait_for(ids, timeout_s, check=self.worker.check)
        except BenchError as exc:
            raise BenchError(f"{exc}; worker log: ...{self.worker.log_tail()}") from exc


def warm_up(ph: Phase, event: Event, timeout_s: float) -> int:
    """Rounds of one event per partition until every worker process answered; returns rounds."""
    deadline = time.monotonic() + timeout_s
    rounds = 0
    while True:
        ids = [ph.pub.send(event, partition=p)[0] for p in ph.pub.partitions]
        ph.pub.flush()
        got = ph.wait_for(ids, max(1.0, deadline - time.monotonic()))
        rounds += 1
        workers = len({a.worker_id for a in got.values()})
        # Two rounds at least: the first answers may come from a group that is still forming.
        if rounds >= 2 and workers >= ph.worker.processes:
            return rounds
        if time.monotonic() > deadline:
            raise BenchError(f"warm-up: answers from {workers} of {ph.worker.processes} workers")


@contextmanager
def phase(
    base: Settings,
    bootstrap: str,
    tag: str,
    processes: int,
    naive: bool,
    warm_event: Event,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    broker_pid: int | None = None,
    generator: str = DEFAULT_GENERATOR,
) -> Iterator[Phase]:
    """Fresh topics and group, a reader, a publisher and a warmed-up worker (``extra_env`` in its
    environment); all torn down after. ``broker_pid``: the local broker's, for its CPU time;
    ``generator``: the publisher's and reader's Kafka client (:mod:`worker.bench.loadgen`)."""
    settings = phase_settings(base, bootstrap, tag)
    pub, reader = open_clients(generator, bootstrap, settings)
    worker: WorkerProcess | None = None
    try:
        worker = WorkerProcess(settings, processes, naive, log_dir / f"{tag}.log", extra_env)
        ph = Phase(pub, reader, worker, broker_pid)
        try:
            warm_up(ph, warm_event, timeout_s=180.0)
            yield ph
        except BenchError as exc:  # what the broker and the worker say, beside its log
            port = getattr(worker, "metrics_port", 0)
            raise BenchError(f"{exc}; {diagnose(bootstrap, settings, port)}") from exc
        worker.check()  # a worker that died mid-phase makes the phase's figures meaningless
    finally:
        if worker is not None:
            worker.stop()
        pub.close()
        reader.close()
        delete_topics(bootstrap, settings)


def _stages(ph: Phase, before: str) -> dict[str, Any]:
    after = ph.worker.scrape()
    return {"worker_stage_means": stage_means(before, after)} if before and after else {}


def _answered(arrivals: dict[str, Arrival]) -> dict[str, Any]:
    return {
        "answered": len(arrivals),
        "dead_letters": sum(a.dead for a in arrivals.values()),
        "frames": sum(a.frames for a in arrivals.values()),
        "workers": len({a.worker_id for a in arrivals.values() if not a.dead}),
    }


def saturate(ph: Phase, events: Sequence[Event], n: int, timeout_s: float) -> dict[str, Any]:
    """Publish ``n`` events back to back; the worker's rate on the backlog they leave
    (:func:`backlog_rate`), the rate over the whole burst, and the CPU each role (worker,
    broker, this process) used per event meanwhile."""
    before = ph.worker.scrape()
    meter = ph.cpu_meter()
    cpu_start = meter.sample()
    t0 = time.time()
    ids = [ph.pub.send(events[i % len(events)])[0] for i in range(n)]
    ph.pub.flush()
    published = time.time() - t0
    arrivals = ph.wait_for(ids, timeout_s)
    seconds = max(a.arrived for a in arrivals.values()) - t0
    cpu = meter.per_event(cpu_start, n, time.time() - t0)
    out = _answered(arrivals)
    whole = round(out["frames"] / seconds, 2)
    backlog = backlog_rate(list(arrivals.values()), t0 + published)
    return {
        "events": n,
        **out,
        "seconds": round(seconds, 3),
        "publish_s": round(published, 3),
        "img_s": backlog if backlog is not None else whole,
        "rate_over": "backlog" if backlog is not None else "whole burst",
        "img_s_whole_burst": whole,
        **cpu,
        **_stages(ph, before),
    }


def backlog_rate(arrivals: Sequence[Arrival], published_at: float) -> float | None:
    """Frames answered per second once every event is published: the worker's own rate on a
    backlog, the way kafka-consumer-perf-test reads a full topic. While this process publishes
    (about a fifth of a 1,000-event burst), it and the broker take a core of a two-core
    machine away from the worker, which the compute limit it is compared with never shares;
    the whole-burst rate (``img_s_whole_burst``) keeps that cost in.

    Counted from the first answer after the last send to the last answer, each answer's frames
    once the clock has started: answers come a chunk at a time, so the first chunk's frames,
    computed before the clock started, are not counted. None when fewer than a quarter of the
    answers came after the last send (too short a backlog to say).

    >>> a = [Arrival(t, 1, "w", None, None) for t in (0.5, 1.0, 1.0, 2.0, 2.0, 3.0)]
    >>> backlog_rate(a, published_at=0.9)
    1.5
    """
    after = sorted(a.arrived for a in arrivals if a.arrived > published_at)
    if len(after) < max(2, len(arrivals) / 4):
        return None
    first, last = after[0], after[-1]
    frames = sum(a.frames for a in arrivals if a.arrived > first)
    return round(frames / (last - first), 2) if last > first else None


def send_paced(
    ph: Phase,
    events: Sequence[Event],
    rate: float,
    n: int,
    actions: Sequence[tuple[float, str, Callable[[], None]]] = (),
) -> tuple[dict[str, float], dict[str, float]]:
    """Send ``n`` events open loop at ``rate`` per second; run each ``(offset_s, name, action)``
    when the schedule reaches its offset. Returns each event's send time by id, and each
    action's start time by name (both ``time.time()``)."""
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    pending = sorted(actions, key=lambda a: a[0])
    start = time.monotonic() + 0.01
    for i, offset in enumerate(pacing_schedule(rate, n)):
        while pending and pending[0][0] <= offset:
            _, name, action = pending.pop(0)
            done[name] = time.time()
            action()
        delay = start + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event_id, sent_at = ph.pub.send(events[i % len(events)])
        sent[event_id] = sent_at
    ph.pub.flush()
    return sent, done


def paced(
    ph: Phase, events: Sequence[Event], rate: float, n: int, timeout_s: float
) -> dict[str, Any]:
    """Open-loop load at ``rate`` events/s: answer counts, rates and latency percentiles.

    ``p*_ms`` are reader-side latencies, ``worker_p*_ms`` the findings' own ``latency_ms`` and
    ``compute_p*_ms`` the time the worker spent computing (decode to finding), and
    ``wait_p*_ms`` each event's own latency less its compute: the time it waited before (and
    between) its stages, in the producer, the broker, the fetch, the poll and the batch. The
    difference between the reader-side and the worker's latency is the way back (produce of the
    finding, the reader's fetch).
    """
    before = ph.worker.scrape()
    sent, _ = send_paced(ph, events, rate, n)
    span = max(sent.values()) - min(sent.values())
    arrivals = ph.wait_for(list(sent), timeout_s)
    ok = {i: a for i, a in arrivals.items() if not a.dead}
    frames_per_event = sum(a.frames for a in ok.values()) / max(1, len(ok))
    row: dict[str, Any] = {
        "events": n,
        **_answered(arrivals),
        "offered_img_s": round(rate * frames_per_event, 2),
        "achieved_img_s": round((n - 1) / span * frames_per_event, 2) if span > 0 else None,
        **latency_summary([(a.arrived - sent[i]) * 1e3 for i, a in ok.items()]),
    }
    waits = [
        a.worker_latency_ms - a.compute_ms
        for a in ok.values()
        if a.worker_latency_ms is not None and a.compute_ms is not None
    ]
    for prefix, values in (
        ("worker", [a.worker_latency_ms for a in ok.values()]),
        ("compute", [a.compute_ms for a in ok.values()]),
        ("wait", waits),
    ):
        summary = latency_summary([v for v in values if v is not None])
        row.update({f"{prefix}_{k}": v for k, v in summary.items() if k != "mean_ms"})
    return {**row, **_stages(ph, before)}
