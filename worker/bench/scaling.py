"""``scanstream bench --stage scaling``: the sizing model behind ``deploy/kubernetes``.

On one events topic of :data:`~worker.bench.e2e.PARTITIONS` (6) partitions, against the broker
named by ``KAFKA_BOOTSTRAP_SERVERS`` or a local one started for the run:

* **throughput per process**: 1, 2 and 3 separate ``scanstream run`` processes in one consumer
  group (as 1, 2 and 3 replicas would be), each at saturation (best of two bursts), and one
  process on 256x256 slices beside the 512x512 ones (how the rate changes with image size);
* **what a rebalance costs**: two processes under an open-loop paced load of half their
  saturation rate; a third joins after :data:`ADD_AT_S` (a scale-up) and one of the first two
  gets SIGTERM after :data:`REMOVE_AT_S` (a scale-down: it drains and leaves the group). For
  each change: the longest gap between two findings arriving in the next
  :data:`WINDOW_S` seconds (normal: one send interval) and the largest latency of an event sent
  in that window, against the latency p50 before the first change.

Every process has its own worker id (``SCANSTREAM_WORKER_ID``), as pods have their names.
The KEDA rule the figures feed is in ``deploy/kubernetes/README.md``: ``lagThreshold`` = the
img/s of one replica x the latency budget, with the budget above the measured pause.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Final

from worker.bench import BenchError, e2e
from worker.bench.e2e import Phase
from worker.bench.loadgen import DEFAULT_GENERATOR, Arrival, Event, describe, open_clients
from worker.bench.report import latency_summary
from worker.settings import Settings

PROCESSES: Final = (1, 2, 3)
ADD_AT_S: Final = 6.0
REMOVE_AT_S: Final = 16.0
PACED_S: Final = 26.0
WINDOW_S: Final = 8.0
_TIMEOUT_S: Final = 180.0

Phased = AbstractContextManager[tuple[Phase, "WorkerGroup"]]


class WorkerGroup:
    """Several one-process workers of one consumer group, each with its own worker id."""

    def __init__(self, settings: Settings, count: int, log_dir: Path, tag: str) -> None:
        self.settings, self.log_dir, self.tag = settings, log_dir, tag
        self.members: list[e2e.WorkerProcess] = []
        for _ in range(count):
            self.add()

    @property
    def processes(self) -> int:
        return len(self.members)

    def add(self) -> None:
        n = len(self.members)
        worker_id = f"{self.settings.worker_id}-{n}"
        log = self.log_dir / f"{self.tag}-{n}.log"
        env = {"SCANSTREAM_WORKER_ID": worker_id}
        self.members.append(e2e.WorkerProcess(self.settings, 1, False, log, extra_env=env))

    def stop_one(self) -> None:
        """SIGTERM to the oldest member, as a scale-down does: it drains and leaves."""
        self.members.pop(0).stop()

    def pids(self) -> list[int]:
        return [pid for member in self.members for pid in member.pids()]

    def check(self) -> None:
        for member in self.members:
            member.check()

    def scrape(self) -> str:
        return ""  # several processes: their stage timings are not what this stage reports

    def log_tail(self) -> str:
        return " | ".join(m.log_tail()[-500:] for m in self.members)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


@contextmanager
def group_phase(
    base: Settings,
    bootstrap: str,
    tag: str,
    count: int,
    warm_event: Event,
    log_dir: Path,
    generator: str = DEFAULT_GENERATOR,
) -> Iterator[tuple[Phase, WorkerGroup]]:
    """Fresh topics and group, a reader, a publisher and ``count`` warmed-up workers."""
    settings = e2e.phase_settings(base, bootstrap, tag)
    pub, reader = open_clients(generator, bootstrap, settings)
    group: WorkerGroup | None = None
    try:
        group = WorkerGroup(settings, count, log_dir, tag)
        ph = Phase(pub, reader, group)
        e2e.warm_up(ph, warm_event, timeout_s=_TIMEOUT_S)
        yield ph, group
        group.check()
    finally:
        if group is not None:
            group.stop()
        pub.close()
        reader.close()
        e2e.delete_topics(bootstrap, settings)


def pause_after(
    change_s: float, sent: dict[str, float], arrivals: dict[str, Arrival], window_s: float
) -> dict[str, float]:
    """What one membership change at ``change_s`` (absolute time) cost: the longest gap between
    consecutive arrivals and the largest latency of the events sent in the window after it.

    >>> sent = {"a": 0.0, "b": 1.0, "c": 2.0}
    >>> got = {"a": 0.01, "b": 2.5, "c": 2.51}
    >>> arr = {k: Arrival(t, 1, "w", None, None) for k, t in got.items()}
    >>> pause_after(0.5, sent, arr, 5.0)
    {'longest_gap_ms': 2490.0, 'max_latency_ms': 1500.0}
    """
    times = sorted(a.arrived for a in arrivals.values())
    before = [t for t in times if t < change_s]
    after = [t for t in times if change_s <= t <= change_s + window_s]
    points = before[-1:] + after
    gaps = [b - a for a, b in itertools.pairwise(points)]
    latencies = [
        arrivals[i].arrived - t for i, t in sent.items() if change_s <= t <= change_s + window_s
    ]
    return {
        "longest_gap_ms": round(1e3 * max(gaps, default=0.0), 1),
        "max_latency_ms": round(1e3 * max(latencies, default=0.0), 1),
    }


def _paced_with_changes(
    ph: Phase,
    events: Sequence[Event],
    rate: float,
    seconds: float,
    changes: Sequence[tuple[float, str, Callable[[], None]]],
) -> dict[str, Any]:
    sent, at = e2e.send_paced(ph, events, rate, int(rate * seconds), changes)
    arrivals = ph.wait_for(list(sent), _TIMEOUT_S)
    first = min(at.values(), default=time.time())
    steady = [(a.arrived - sent[i]) * 1e3 for i, a in arrivals.items() if sent[i] < first]
    return {
        "rate_events_s": round(rate, 2),
        "events": len(sent),
        "answered": len(arrivals),
        "steady_latency": latency_summary(steady) if steady else {},
        **{name: pause_after(t, sent, arrivals, WINDOW_S) for name, t in at.items()},
    }


def _saturation(ph: Phase, events: Sequence[Event], n: int) -> dict[str, Any]:
    runs = [e2e.saturate(ph, events, n, _TIMEOUT_S) for _ in range(2)]
    return {"img_s": max(r["img_s"] for r in runs), "bursts_img_s": [r["img_s"] for r in runs]}


def bench_scaling(settings: Settings, generator: str = DEFAULT_GENERATOR) -> dict[str, Any]:
    """Throughput per process for 1-3 processes, by image size, and the rebalance pauses."""
    from worker.bench.suite import _kafka, _say, build_workload, noise_hu_from_env

    load_generator = describe(generator)  # fails at once if its client is not installed
    started = time.monotonic()
    noise = noise_hu_from_env()
    big, small = build_workload(noise_hu=noise), build_workload(size=256, noise_hu=noise)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scanstream-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        with _kafka(settings, tmp) as (bootstrap, where, _):

            def workers(tag: str, count: int, warm: Event) -> Phased:
                return group_phase(settings, bootstrap, tag, count, warm, tmp, generator)

            for count in PROCESSES:
                with workers(f"scale{count}", count, big[0]) as (ph, _):
                    got = _saturation(ph, big, 300 * count)
                rows.append({"processes": count, **got, "per_process": got["img_s"] / count})
                _say(f"scaling: {count} processes, {got['img_s']} img/s")
            with workers("size256", 1, small[0]) as (ph, _):
                small_rate = _saturation(ph, small, 600)
            _say(f"scaling: 256x256 slices, 1 process, {small_rate['img_s']} img/s")
            rate = 0.5 * float(rows[1]["img_s"])
            with workers("rebalance", 2, big[0]) as (ph, group):
                changes = [
                    (ADD_AT_S, "scale_up_2_to_3", group.add),
                    (REMOVE_AT_S, "scale_down_3_to_2", group.stop_one),
                ]
                rebalance = _paced_with_changes(ph, big, rate, PACED_S, changes)
            _say(f"scaling: rebalances {rebalance}")
    for row in rows:
        row["per_process"] = round(row["per_process"], 2)
    return {
        "stage": "scaling",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "wall_s": round(time.monotonic() - started, 1),
        "partitions": e2e.PARTITIONS,
        "broker": where,
        "load_generator": load_generator,
        "noise_hu": noise,
        "throughput": rows,
        "size256_1_process_img_s": small_rate["img_s"],
        "size512_1_process_img_s": rows[0]["img_s"],
        "rebalance": rebalance,
    }


__all__ = ["BenchError", "WorkerGroup", "bench_scaling", "pause_after"]
