"""``scanstream bench``: the workload, the compute limit, and the whole suite in one run.

Workload (:func:`build_workload`): 512x512 16-bit CT-like phantoms (:mod:`worker.phantoms`,
deterministic seeds, every fourth with a lesion), half Explicit VR Little Endian and half RLE
Lossless, plus the single-frame pydicom samples of :data:`SAMPLES` that this build decodes. The
phantoms carry Gaussian noise of ``noise_hu`` (default :data:`NOISE_HU`, 25 HU: ordinary CT
quantum noise; the phantoms' own default of 12 HU is smoother than real scans, and noise changes
what RLE compresses and what the filters and the edge detector have to do). The environment
variable ``SCANSTREAM_BENCH_NOISE_HU`` overrides it for a run (:func:`noise_hu_from_env`).

Compute limit (:func:`compute_limit`): the same pipeline with no Kafka at all
(:class:`~worker.pipeline.Pipeline`, one event at a time) in fresh ``spawn`` processes with
default threading, as the worker runs: once with one process and once with one per core, all
processes started together behind a barrier. Images per second = frames / wall time, best of
six windows: three before the end-to-end phases and three after them.

End to end (:mod:`worker.bench.e2e`): one worker process at saturation, two processes at
saturation, the naive worker (:mod:`worker.bench.naive`) at saturation, one worker process at
saturation on reference (claim-check) events (:mod:`worker.bench.references`: the same slices
as files in a folder the worker is allowed to read, fetched and sha256-checked per event), best
of two bursts each, then latency at 25%, 50% and 75% of the one-process saturation rate, each
phase on topics of its own, against the broker named by ``KAFKA_BOOTSTRAP_SERVERS`` or a local
one started (and stopped) for the run. The reference phase is as long as the naive one. Phase sizes
derive from the measured compute limit so that the suite takes a few minutes on two cores.

Stages: ``imaging`` and ``inference`` run :mod:`worker.bench.imaging` and
:mod:`worker.bench.inference` alone; ``e2e`` the above; ``all`` everything, with the end-to-end
keys at the top level and the two stage results under ``"imaging"`` and ``"inference"``;
``gateway`` (:mod:`worker.bench.gateway`) C-STORE through the gateway against dcmtk's
storescp; ``all`` runs it too where dcmtk is installed, and otherwise records why not;
``scaling`` (:mod:`worker.bench.scaling`, not part of ``all``) the sizing model of
``deploy/kubernetes``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from worker import broker
from worker.bench import BenchError, e2e
from worker.bench.loadgen import DEFAULT_GENERATOR, Event, describe
from worker.bench.references import write_references
from worker.bench.report import write_reports
from worker.contract import ScanEvent
from worker.dicom import decode
from worker.errors import ScanStreamError
from worker.phantoms import ct_slice, encode_ct, random_lesion
from worker.runtime.publisher import study_key
from worker.settings import Settings

#: Real single-frame samples across transfer syntaxes (those that do not decode are left out).
SAMPLES: Final = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
)
LOADS: Final = (0.25, 0.5, 0.75)
LATENCY_DEFINITION: Final = (
    "Latency = arrival of the finding at a reader in the benchmark process minus the event's "
    "send time (same clock): both produce hops, the broker and the reader's fetch included. "
    "'worker p99' is the finding's own latency_ms (sent-at header, ms precision, to building "
    "the finding); 'compute' is the finding's timings_ms summed (decode to finding), 'wait' "
    "that latency less its compute. Loads are shares of the lower of the worker's saturation "
    "burst and the in-process compute limit."
)
_TIMEOUT_S: Final = 180.0  # bound on every wait of a phase
_BURSTS: Final = 2  # saturation bursts per phase (the best counts, all are reported)
NOISE_HU: Final = 25.0  # the workload's default phantom noise (HU), see the module doc
NOISE_ENV: Final = "SCANSTREAM_BENCH_NOISE_HU"


def _say(message: str) -> None:
    # Progress goes to stderr: stdout's last line is the result.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def noise_hu_from_env(env: Mapping[str, str] | None = None) -> float:
    """``SCANSTREAM_BENCH_NOISE_HU`` as a number of HU >= 0, or :data:`NOISE_HU` when unset."""
    raw = (os.environ if env is None else env).get(NOISE_ENV, "").strip()
    if not raw:
        return NOISE_HU
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise BenchError(f"{NOISE_ENV}={raw!r} is not a noise level in HU (a number >= 0)")
    return value


def build_workload(phantoms: int = 16, size: int = 512, noise_hu: float = NOISE_HU) -> list[Event]:
    """The deterministic event cycle: phantoms (raw and RLE) then the decodable samples."""
    events = []
    for i in range(phantoms):
        lesion = random_lesion(np.random.default_rng(i), size) if i % 4 == 3 else None
        syntax = ExplicitVRLittleEndian if i % 2 == 0 else RLELossless
        hu = ct_slice(1000 + i, size, lesion, noise_hu=noise_hu)
        data = encode_ct(hu, study=f"bench-{i}", instance=i + 1, transfer_syntax=syntax)
        kind = "raw" if syntax == ExplicitVRLittleEndian else "rle"
        events.append(Event(f"phantom-{i}-{kind}", data, study_key(data), 1))
    base = Path(pydicom.__file__).parent / "data" / "test_files"  # never get_testdata_files()
    for name in SAMPLES:
        path = base / name
        if not path.exists():
            continue
        data = path.read_bytes()
        try:
            frames = len(decode(data).frames)
        except ScanStreamError:
            continue
        events.append(Event(name, data, study_key(data), frames))
    return events


def describe_workload(events: Sequence[Event], noise_hu: float) -> dict[str, Any]:
    """What the result records of the workload (``noise_hu``: what it was built with)."""
    return {
        "noise_hu": noise_hu,
        "events_per_cycle": len(events),
        "frames_per_cycle": sum(e.frames for e in events),
        "mean_event_bytes": round(sum(len(e.data) for e in events) / len(events)),
        "names": [e.name for e in events],
    }


def _limit_child(
    datas: list[bytes], settings: Settings, windows: int, seconds: float, barrier: Any, out: Any
) -> None:
    """One compute-limit process: warm up, then ``windows`` runs of ``seconds``, each started
    together with the other processes' behind ``barrier``."""
    from worker.inference import ModelSet
    from worker.pipeline import Pipeline
    from worker.runtime import allocator

    allocator.tune(settings.malloc_tune)  # as in a worker process: like is compared with like
    models = ModelSet.load(
        Path(settings.models_dir) if settings.models_dir else None,
        settings.require_gpu,
        max_batch=settings.batch_max_size,
    )
    pipeline = Pipeline(models, settings)

    def one(data: bytes) -> int:
        [outcome] = pipeline.process([ScanEvent("limit", time.time(), data=data)])
        assert outcome.finding is not None, outcome.rejection
        return int(outcome.finding["frame_count"])

    for data in datas:  # warm-up: first-call allocations, ONNX Runtime's lazy initialisation
        one(data)
    runs, n = [], 0
    for _ in range(windows):
        barrier.wait(timeout=_TIMEOUT_S)
        t0, frames = time.time(), 0
        while time.time() - t0 < seconds:
            frames += one(datas[n % len(datas)])
            n += 1
        runs.append((t0, time.time(), frames))
    out.put((runs, n, models.provider, models.provider_note))


def compute_limit(
    events: Sequence[Event],
    settings: Settings,
    processes: int,
    windows: int = 3,
    seconds: float = 2.0,
) -> dict[str, Any]:
    """Images per second of the bare pipeline in ``processes`` concurrent spawn processes.

    The best of ``windows`` concurrent windows is the limit: other load on a shared machine only
    ever slows a window down, so the fastest is the closest to what the machine can do. Every
    window's rate is reported too.
    """
    ctx = mp.get_context("spawn")  # a fresh interpreter each, as `scanstream run` has
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    datas = [e.data for e in events]
    args = (datas, settings, windows, seconds, barrier, out)
    children = [ctx.Process(target=_limit_child, args=args) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        results = [out.get(timeout=_TIMEOUT_S + windows * seconds) for _ in children]
    except queue.Empty as exc:
        codes = [c.exitcode for c in children]
        raise BenchError(f"a compute-limit process did not report (exit codes {codes})") from exc
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    rates = []
    for w in range(windows):
        spans = [r[0][w] for r in results]
        wall = max(s[1] for s in spans) - min(s[0] for s in spans)
        rates.append(round(sum(s[2] for s in spans) / wall, 2))
    return {
        "processes": processes,
        "img_s": max(rates),
        "windows_img_s": rates,
        "window_s": seconds,
        "events": sum(r[1] for r in results),
        "provider": results[0][2],
        "provider_note": results[0][3],
    }


def _merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two compute-limit measurements as one: every window, the best one as the limit."""
    windows = [*first["windows_img_s"], *second["windows_img_s"]]
    events = first["events"] + second["events"]
    return {**first, "img_s": max(windows), "windows_img_s": windows, "events": events}


@contextmanager
def _kafka(settings: Settings, tmp: Path) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap, description, pid): the configured broker (no pid), or a local one for this
    run only."""
    if settings.bootstrap_servers:
        where = f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}"
        yield settings.bootstrap_servers, where, None
        return
    state = tmp / "broker"
    info, _ = broker.start(state_dir=state)
    try:
        yield info.bootstrap, f"local Apache Kafka {info.version} (started for this run)", info.pid
    finally:
        broker.stop(state_dir=state)


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(high, max(low, round(value))))


def bench_e2e(settings: Settings, cores: int, generator: str = DEFAULT_GENERATOR) -> dict[str, Any]:
    """Compute limit, saturation (1 and 2 processes, naive, reference events) and latency
    against load; ``generator``: the Kafka client that publishes and reads back
    (:mod:`worker.bench.loadgen`)."""
    load_generator = describe(generator)  # fails at once if its client is not installed
    noise_hu = noise_hu_from_env()
    events = build_workload(noise_hu=noise_hu)
    _say(f"workload: {len(events)} events per cycle; compute limit, 1 process ...")
    limit1 = compute_limit(events, settings, 1)
    _say(f"limit 1 process: {limit1['windows_img_s']} img/s; {cores} processes ...")
    limit_n = compute_limit(events, settings, cores)
    _say(f"limit {cores} processes: {limit_n['windows_img_s']} img/s")
    rate = float(limit1["img_s"])
    n_sat, n_naive = _clamp(5 * rate, 300, 1000), _clamp(3 * rate, 150, 500)
    phases: dict[str, Any] = {}
    latency: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with _kafka(settings, tmp) as (bootstrap, where, broker_pid):
            _say(f"broker: {where}")
            # Written once, read by the worker on every event: what the claim check adds.
            refs, allow = write_references(events, tmp / "references")
            for tag, processes, naive, n, work, env in (
                ("worker1", 1, False, n_sat, events, {}),
                ("worker2", 2, False, n_sat, events, {}),
                ("naive", 1, True, n_naive, events, {}),
                ("reference", 1, False, n_naive, refs, allow),
                # The worker's default computes in a child process; this is the other way.
                ("thread", 1, False, n_sat, events, {"SCANSTREAM_COMPUTE_PROCESS": "false"}),
            ):
                args = (settings, bootstrap, tag, processes, naive, work[0], tmp, env, broker_pid)
                with e2e.phase(*args, generator=generator) as ph:
                    runs = [e2e.saturate(ph, work, n, _TIMEOUT_S) for _ in range(_BURSTS)]
                # As for the limit: the best burst is the one least disturbed by other load.
                phases[tag] = {"img_s": max(r["img_s"] for r in runs), "bursts": runs}
                _say(f"{tag}: {[r['img_s'] for r in runs]} img/s, bursts of {n} events")
            # Loads are shares of what one worker can really do: its saturation burst, but never
            # more than the in-process compute limit (a burst measured above the limit, seen
            # on this noisy machine, made "50%" a load near its real capacity).
            saturation = min(float(phases["worker1"]["img_s"]), rate)
            for load in LOADS:
                offered, tag = load * saturation, f"load{int(load * 100)}"
                n = _clamp(15 * offered, 150, 900)  # ~15 s: enough samples for a p99
                with e2e.phase(
                    settings, bootstrap, tag, 1, False, events[0], tmp,
                    broker_pid=broker_pid, generator=generator,
                ) as ph:  # fmt: skip
                    row = {"load": load, **e2e.paced(ph, events, offered, n, _TIMEOUT_S)}
                latency.append(row)
                _say(f"load {load:.0%}: p50 {row.get('p50_ms')} ms, p99 {row.get('p99_ms')} ms")
    # Measured again now that the broker is gone: a burst of other load during the first
    # measurement would otherwise inflate every ratio to the limit.
    _say("compute limit again ...")
    limit1 = _merge(limit1, compute_limit(events, settings, 1))
    limit_n = _merge(limit_n, compute_limit(events, settings, cores))
    _say(f"limits: {limit1['windows_img_s']}, {limit_n['windows_img_s']} img/s")
    e2e1, e2e2 = phases["worker1"]["img_s"], phases["worker2"]["img_s"]
    naive, reference = phases["naive"]["img_s"], phases["reference"]["img_s"]
    in_process = phases["thread"]["img_s"]
    half = next(row for row in latency if row["load"] == 0.5)
    return {
        "limit_img_s": limit1["img_s"],
        "e2e_img_s": e2e1,
        "ratio_to_limit": round(e2e1 / limit1["img_s"], 3),
        "e2e_reference_img_s": reference,
        "ratio_to_limit_reference": round(reference / limit1["img_s"], 3),
        "naive_img_s": naive,
        "ratio_to_naive": round(e2e1 / naive, 3),
        # The same worker with SCANSTREAM_COMPUTE_PROCESS=false (compute on a thread of its own
        # process, beside Kafka's threads and under the same interpreter lock).
        "e2e_thread_img_s": in_process,
        "ratio_to_limit_thread": round(in_process / limit1["img_s"], 3),
        "ratio_to_naive_thread": round(in_process / naive, 3),
        "p50_ms_at_50pct": half.get("p50_ms"),
        "p95_ms_at_50pct": half.get("p95_ms"),
        "p99_ms_at_50pct": half.get("p99_ms"),
        "limit_all_cores_img_s": limit_n["img_s"],
        "limit_processes": cores,
        "e2e_2proc_img_s": e2e2,
        "scaling_2_vs_1": round(e2e2 / e2e1, 3),
        "ratio_2proc_to_limit_all_cores": round(e2e2 / limit_n["img_s"], 3),
        "provider": limit1["provider"],
        "provider_note": limit1["provider_note"],
        "cores": cores,
        "broker": where,
        "load_generator": load_generator,
        "latency": latency,
        "latency_definition": LATENCY_DEFINITION,
        "phases": phases,
        "limits": {"one_process": limit1, "all_cores": limit_n},
        "workload": describe_workload(events, noise_hu),
    }


def run_bench(
    stage: str,
    results_dir: Path,
    instances: int | None = None,
    generator: str = DEFAULT_GENERATOR,
) -> dict[str, Any]:
    """Run ``stage`` (all, imaging, inference, e2e, gateway), write the reports, return the
    result. ``instances``: the CT slices the gateway stage sends (default 200); ``generator``:
    the e2e and scaling stages' load generator (:mod:`worker.bench.loadgen`)."""
    started = time.monotonic()
    command = f"scanstream bench --stage {stage} --results {results_dir}"
    if generator != DEFAULT_GENERATOR:
        command += f" --generator {generator}"
    if stage == "imaging":
        from worker.bench.imaging import bench_imaging

        stage_result: dict[str, Any] = dict(bench_imaging())
    elif stage == "inference":
        from worker.bench.inference import bench_inference

        stage_result = dict(bench_inference())
    elif stage == "gateway":
        from worker.bench.gateway import DEFAULT_INSTANCES, run_gateway_stage

        n = instances or DEFAULT_INSTANCES
        command += f" --instances {n}"
        stage_result = run_gateway_stage(Settings.from_env(), n)
    elif stage == "scaling":
        from worker.bench.scaling import bench_scaling

        stage_result = bench_scaling(Settings.from_env(), generator)
    elif stage in ("e2e", "all"):
        stage_result = {}
    else:
        raise ValueError(
            f"unknown bench stage {stage!r}: use all, imaging, inference, e2e, gateway or scaling"
        )
    if stage_result:
        write_reports({**stage_result, "command": command}, results_dir, stage)
        return stage_result
    nested: dict[str, Any] = {}
    if stage == "all":
        for name in ("imaging", "inference"):
            _say(f"stage {name} ...")
            nested[name] = run_bench(name, results_dir)
        # The gateway's figures where dcmtk is installed (its storescu is the sender); without
        # it the result says why they are missing instead of failing the whole run.
        _say("stage gateway ...")
        try:
            nested["gateway"] = run_bench("gateway", results_dir)
        except BenchError as exc:
            nested["gateway"] = {"skipped": str(exc)}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = bench_e2e(Settings.from_env(), cores or 1, generator)
    result.update(nested)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["command"] = command
    result["files"] = write_reports(result, results_dir, "bench")
    return result
