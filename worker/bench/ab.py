"""Interleaved A/B latency rounds: the same paced load against workers that differ only in their
environment, so that a change's effect can be told from this machine's noise.

On the 2-core development machine the p99 of one paced phase at half load moved between 52 and
126 ms from one phase to the next with the same code (README, Benchmarks), far more than most
changes move it. So each round runs every variant once, in alternating order (the first variant
leads in even rounds), each in a fresh phase (topics, group, worker) on one broker, after one
warm-up phase that is not reported (a broker just started is slower for its first seconds). It
prints one JSON line per phase, then a summary: per variant, the median of each figure over the
rounds, and in how many rounds it had the lower p50 and p99 than the first variant.

    python -m worker.bench.ab --rate 110 --rounds 6 \\
        every='{"SCANSTREAM_COMMIT_INTERVAL_MS": "0"}' spaced='{}'

A variant's environment goes to its worker only (``worker.bench.e2e.phase``). Its load generator
(:mod:`worker.bench.loadgen`) is librdkafka unless its tag names another after a colon, so that
generators can be compared on the same worker:

    python -m worker.bench.ab --rate 112 kp:kafka-python='{}' rd:librdkafka='{}'

Figures are those of :func:`worker.bench.e2e.paced`, and the CPU of the worker, the broker and
this process (the load generator) per event, and the cores busy in all (``worker.bench.cpu``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.bench import e2e, suite
from worker.bench.loadgen import DEFAULT_GENERATOR, GENERATORS
from worker.settings import Settings

FIGURES = (
    "p50_ms", "p99_ms", "wait_p99_ms", "compute_p50_ms", "arrival_ms",
    "worker_cpu_ms", "broker_cpu_ms", "bench_cpu_ms", "cores_busy",
)  # fmt: skip

#: (tag, the worker's extra environment, the load generator)
Variant = tuple[str, dict[str, str], str]


def order(variants: Sequence[Variant], round_no: int) -> list[Variant]:
    """The variants in the order round ``round_no`` runs them: alternating, so that neither
    always runs first.

    >>> [tag for tag, _, _ in order([("a", {}, "librdkafka"), ("b", {}, "librdkafka")], 1)]
    ['b', 'a']
    """
    return list(variants) if round_no % 2 == 0 else list(reversed(variants))


def figures(row: dict[str, Any], cpu: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The figures of one paced phase that the comparison reports; ``cpu``: what
    :meth:`worker.bench.cpu.CpuMeter.per_event` measured over it.

    >>> cpu = {"cpu_ms_per_event": {"worker": 8.2, "bench": 0.5}, "cores_busy": 1.2}
    >>> got = figures({"p50_ms": 20.0, "worker_stage_means": {"arrival_ms": 10.5}}, cpu)
    >>> got["p50_ms"], got["arrival_ms"], got["bench_cpu_ms"], got["broker_cpu_ms"]
    (20.0, 10.5, 0.5, None)
    """
    stages = row.get("worker_stage_means") or {}
    out: dict[str, float | None] = {k: row.get(k) for k in FIGURES[:4]}
    out["arrival_ms"] = stages.get("arrival_ms")
    per_event = (cpu or {}).get("cpu_ms_per_event", {})
    for role in ("worker", "broker", "bench"):
        out[f"{role}_cpu_ms"] = per_event.get(role)
    out["cores_busy"] = (cpu or {}).get("cores_busy")
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the median of each figure over its rounds; for every variant after the
    first, the rounds in which it had the lower p50 and p99 than the first one.

    >>> rows = [{"variant": "a", "round": 0, "p50_ms": 30.0, "p99_ms": 60.0},
    ...         {"variant": "b", "round": 0, "p50_ms": 25.0, "p99_ms": 70.0}]
    >>> summarize(rows)["b"]["lower_than_a"]
    {'p50_ms': '1 of 1', 'p99_ms': '0 of 1'}
    """
    tags = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["round"]): r for r in rows}
    out: dict[str, Any] = {}
    for tag in tags:
        mine = [r for r in rows if r["variant"] == tag]
        medians = {
            k: round(statistics.median(v), 2)
            for k in FIGURES
            if (v := [r[k] for r in mine if r.get(k) is not None])
        }
        out[tag] = {"rounds": len(mine), "median": medians}
        if tag != tags[0]:
            pairs = [(by[(tags[0], r["round"])], r) for r in mine if (tags[0], r["round"]) in by]
            out[tag][f"lower_than_{tags[0]}"] = {
                k: f"{sum(1 for a, b in pairs if b[k] < a[k])} of {len(pairs)}"
                for k in ("p50_ms", "p99_ms")
            }
    return out


def run(variants: Sequence[Variant], rate: float, rounds: int, events_per_phase: int) -> None:
    settings = Settings.from_env()
    events = suite.build_workload()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scanstream-ab-") as tmp_name:
        tmp = Path(tmp_name)
        with suite._kafka(settings, tmp) as (bootstrap, _, broker_pid):
            tag, env, generator = variants[0]
            with e2e.phase(
                settings, bootstrap, "warm", 1, False, events[0], tmp, env, generator=generator
            ) as ph:
                e2e.paced(ph, events, rate, events_per_phase, 300)
            for round_no in range(rounds):
                for tag, env, generator in order(variants, round_no):
                    phase = e2e.phase(
                        settings, bootstrap, f"{tag}{round_no}", 1, False, events[0], tmp, env,
                        broker_pid, generator,
                    )  # fmt: skip
                    with phase as ph:
                        meter = ph.cpu_meter()
                        start, started = meter.sample(), time.monotonic()
                        row = e2e.paced(ph, events, rate, events_per_phase, 300)
                        cpu = meter.per_event(start, events_per_phase, time.monotonic() - started)
                    rows.append({"variant": tag, "round": round_no, **figures(row, cpu)})
                    print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"rate": rate, "summary": summarize(rows)}), flush=True)


def _variant(text: str) -> Variant:
    """``TAG[:GENERATOR]=JSON`` as a variant.

    >>> _variant('kp:kafka-python={"A": 1}')
    ('kp', {'A': '1'}, 'kafka-python')
    """
    name, sep, env = text.partition("=")
    tag, _, generator = name.partition(":")
    generator = generator or DEFAULT_GENERATOR
    if not sep or not tag:
        raise argparse.ArgumentTypeError(f'{text!r}: write TAG=\'{{"NAME": "value"}}\'')
    if generator not in GENERATORS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the load generator after the colon is one of {', '.join(GENERATORS)}"
        )
    try:
        parsed = json.loads(env)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the environment is not JSON") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: the environment must be a JSON object")
    return tag, {str(k): str(v) for k, v in parsed.items()}, generator


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench.ab", description=__doc__)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=900, help="events per phase")
    parser.add_argument("variants", nargs="+", type=_variant, help="TAG[:GENERATOR]='{json env}'")
    args = parser.parse_args(argv)
    if len(args.variants) < 2:
        parser.error("give at least two variants")
    run(args.variants, args.rate, args.rounds, args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
