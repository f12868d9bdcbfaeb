"""The benchmark suite's pure parts: statistics, pacing, workload, reports, the naive worker.

Nothing here times anything or needs a broker: the measured phases are exercised by
``scanstream bench`` itself. Reports are rendered from a fabricated result dict.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.bench import BenchError
from worker.bench.e2e import pacing_schedule
from worker.bench.naive import handle
from worker.bench.report import (
    latency_summary,
    percentile,
    render_markdown,
    write_reports,
)
from worker.bench.scrape import stage_means
from worker.bench.suite import (
    NOISE_ENV,
    build_workload,
    describe_workload,
    noise_hu_from_env,
    run_bench,
)
from worker.dicom import decode
from worker.inference import ModelSet
from worker.phantoms import ct_slice, encode_ct
from worker.pipeline import Pipeline
from worker.settings import Settings


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(3)
    values = [rng.expovariate(0.1) for _ in range(137)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_edges() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_latency_summary_is_ordered() -> None:
    values = [float(v) for v in range(1, 201)]
    s = latency_summary(values)
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"] == 200.0
    assert s["mean_ms"] == pytest.approx(100.5)
    assert latency_summary([]) == {}


def test_stage_means_diff_two_scrapes() -> None:
    def scrape(decode: tuple[float, float], batch: tuple[float, float]) -> str:
        return "\n".join(
            [
                "# HELP scanstream_stage_duration_seconds ...",
                f'scanstream_stage_duration_seconds_sum{{stage="decode"}} {decode[0]}',
                f'scanstream_stage_duration_seconds_count{{stage="decode"}} {decode[1]}',
                'scanstream_stage_duration_seconds_sum{stage="fetch"} 0.0',
                'scanstream_stage_duration_seconds_count{stage="fetch"} 0.0',
                'scanstream_stage_duration_seconds_bucket{stage="decode",le="0.001"} 3.0',
                f"scanstream_batch_size_sum {batch[0]}",
                f"scanstream_batch_size_count {batch[1]}",
            ]
        )

    before = scrape((0.010, 5.0), (5.0, 2.0))
    after = scrape((0.050, 25.0), (25.0, 4.0))
    assert stage_means(before, after) == {"decode_ms": 2.0, "batch_size": 10.0}
    assert stage_means(after, after) == {}


def test_pacing_schedule_is_evenly_spaced() -> None:
    schedule = pacing_schedule(rate=20.0, count=101)
    assert len(schedule) == 101 and schedule[0] == 0.0
    assert schedule[-1] == pytest.approx(5.0)
    gaps = np.diff(schedule)
    assert np.allclose(gaps, 0.05)
    assert pacing_schedule(5.0, 0) == []
    with pytest.raises(ValueError):
        pacing_schedule(0.0, 10)


def test_workload_is_deterministic_and_decodable() -> None:
    first = build_workload(phantoms=4, size=64)
    second = build_workload(phantoms=4, size=64)
    # Pixels and study keys are seeded (UIDs made by the encoders may differ per run).
    for a, b in zip(first, second, strict=True):
        da, db = decode(a.data), decode(b.data)
        assert a.key == b.key
        np.testing.assert_array_equal(da.frames, db.frames)
    phantoms = [e for e in first if e.name.startswith("phantom-")]
    assert [e.name.rsplit("-", 1)[1] for e in phantoms] == ["raw", "rle", "raw", "rle"]
    assert any(e.name == "CT_small.dcm" for e in first)
    for event in first:
        assert len(decode(event.data).frames) == event.frames
    info = describe_workload(first, 25.0)
    assert info["events_per_cycle"] == len(first) == len(info["names"])
    assert info["noise_hu"] == 25.0


def test_workload_noise_is_the_noise_asked_for() -> None:
    # Same seeds, so the difference of two noise levels is the noise itself (25 HU here).
    smooth = decode(build_workload(phantoms=1, size=64, noise_hu=0.0)[0].data).frames[0]
    noisy = decode(build_workload(phantoms=1, size=64, noise_hu=25.0)[0].data).frames[0]
    assert 22.0 < float((noisy - smooth)[24:40, 24:40].std()) < 28.0  # soft tissue, no clipping


def test_noise_from_env() -> None:
    assert noise_hu_from_env({}) == 25.0
    assert noise_hu_from_env({NOISE_ENV: " 7.5 "}) == 7.5
    assert noise_hu_from_env({NOISE_ENV: "0"}) == 0.0
    for bad in ("abc", "-1", "nan", "inf"):
        with pytest.raises(BenchError, match=NOISE_ENV):
            noise_hu_from_env({NOISE_ENV: bad})


def _result() -> dict[str, Any]:
    """A fabricated result of the shape bench_e2e returns (values are not measurements)."""
    latency = [
        {"load": load, "offered_img_s": 100 * load, "achieved_img_s": 99 * load, "events": 120,
         "p50_ms": 10 + load, "p95_ms": 20 + load, "p99_ms": 30 + load * 40, "max_ms": 90.0,
         "worker_p99_ms": 25.0, "wait_p50_ms": 3.0, "wait_p99_ms": 18.5,
         "compute_p50_ms": 6.5, "compute_p99_ms": 9.0}
        for load in (0.25, 0.5, 0.75)
    ]  # fmt: skip
    return {
        "limit_img_s": 100.0,
        "limit_all_cores_img_s": 150.0,
        "limit_processes": 2,
        "e2e_img_s": 95.0,
        "ratio_to_limit": 0.95,
        "e2e_reference_img_s": 88.0,
        "ratio_to_limit_reference": 0.88,
        "e2e_2proc_img_s": 140.0,
        "scaling_2_vs_1": 1.47,
        "ratio_2proc_to_limit_all_cores": 0.93,
        "naive_img_s": 40.0,
        "ratio_to_naive": 2.375,
        "p50_ms_at_50pct": 10.5,
        "p99_ms_at_50pct": 50.5,
        "provider": "CPUExecutionProvider",
        "cores": 2,
        "broker": "local",
        "load_generator": "librdkafka 2.16.0 (confluent-kafka 2.16.2)",
        "latency": latency,
        "latency_definition": "arrival minus sent",
        "command": "scanstream bench --stage all --results results",
        "phases": {
            "worker1": {
                "img_s": 95.0,
                "bursts": [{"img_s": 95.0, "worker_stage_means": {"events_per_chunk": 50.0}}],
            }
        },
        "imaging": {"total_ms_per_slice": 4.2},
        "inference": {"batch_1_ms": 0.3},
    }


def test_markdown_shows_throughput_latency_and_targets() -> None:
    md = render_markdown(_result())
    assert "| worker end to end, 1 process | 95.0 |" in md
    assert "reference events (file://) | 88.0 | 0.88 of limit |" in md  # claim check, 1 process
    row = "| 50% | 50.0 | 49.5 | 120 | 10.5 | 20.5 | 50.0 | 90.0 | 25.0 | 3 | 18.5 | 6.5 | 9 |"
    assert row in md  # the wait before compute apart from the compute itself
    assert "met (>= 0.9)" in md  # ratio to the limit
    assert "not met (>= 3)" in md  # ratio to the naive worker
    assert "p99 at 50% load: not met (<= 50)" in md
    assert "| saturation burst 1 | 50.0 | n/a |" in md  # stage means, missing ones as n/a
    assert "## Imaging stage" in md and "total_ms_per_slice" in md
    assert "`scanstream bench --stage all --results results`" in md
    assert "Load generator: librdkafka 2.16.0 (confluent-kafka 2.16.2)." in md


def test_markdown_of_a_stage_result_has_no_e2e_tables() -> None:
    md = render_markdown({"total_ms_per_slice": 4.2})
    assert "Throughput" not in md and "Latency" not in md


def test_write_reports_json_markdown_png(tmp_path: Path) -> None:
    files = write_reports(_result(), tmp_path / "results", "bench")
    assert set(files) == {"json", "markdown", "plot"}
    doc = json.loads(Path(files["json"]).read_text())
    assert doc["e2e_img_s"] == 95.0 and doc["files"] == files
    assert Path(files["markdown"]).read_text().startswith("# ScanStream benchmark")
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown bench stage"):
        run_bench("nope", tmp_path)


# -- the naive worker's per-record step, against an in-memory producer -------------------------


@dataclass
class _Record:
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "events"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1_700_000_000_000
    key: bytes | None = b"k"


class _Future:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def get(self, timeout: float | None = None) -> None:
        self.log.append("get")


@dataclass
class _Producer:
    log: list[str] = field(default_factory=list)
    sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)

    def send(self, topic: str, key: Any, value: bytes, headers: Any = None) -> _Future:
        self.log.append("send")
        self.sent.append((topic, value, headers or []))
        return _Future(self.log)


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


def test_naive_waits_for_each_send(models: ModelSet) -> None:
    settings = Settings(findings_topic="f", dlq_topic="d", alert_rules=())
    producer = _Producer()
    record = _Record(encode_ct(ct_slice(2, 64)), [("event-id", b"e-1")])
    assert handle(record, settings, Pipeline(models, settings), producer) is True
    assert producer.log == ["send", "get"]  # synchronous: acknowledged before returning
    topic, value, _ = producer.sent[0]
    finding = json.loads(value)
    assert topic == "f" and finding["event_id"] == "e-1"
    assert finding["source"] == {"topic": "events", "partition": 0, "offset": 7}


def test_naive_dead_letters_what_is_not_dicom(models: ModelSet) -> None:
    settings = Settings(findings_topic="f", dlq_topic="d")
    producer = _Producer()
    pipeline = Pipeline(models, settings)
    assert handle(_Record(b"not a dicom file"), settings, pipeline, producer) is False
    topic, value, headers = producer.sent[0]
    assert topic == "d" and value == b"not a dicom file"
    assert any(k.endswith("reason") for k, _ in headers)


def test_all_records_why_the_gateway_figures_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench --stage all`` runs the gateway stage too; without dcmtk the result says why."""
    import worker.bench.gateway as gateway
    import worker.bench.imaging as imaging
    import worker.bench.inference as inference
    import worker.bench.suite as suite

    def no_dcmtk() -> tuple[str, str]:
        raise BenchError("bench --stage gateway needs dcmtk's storescu and storescp on PATH")

    monkeypatch.setattr(gateway, "dcmtk_tools", no_dcmtk)
    monkeypatch.setattr(imaging, "bench_imaging", lambda: {"total_ms_per_slice": 4.2})
    monkeypatch.setattr(inference, "bench_inference", lambda: {"batched_img_s": 9000.0})
    generators: list[str] = []

    def fake_e2e(settings: Settings, cores: int, generator: str) -> dict[str, Any]:
        generators.append(generator)
        return dict(_result())

    monkeypatch.setattr(suite, "bench_e2e", fake_e2e)
    result = run_bench("all", tmp_path, generator="kafka-python")
    # The load generator asked for reaches the end-to-end stage and the command to reproduce.
    assert generators == ["kafka-python"]
    assert result["command"].endswith("--generator kafka-python")
    assert result["gateway"] == {
        "skipped": "bench --stage gateway needs dcmtk's storescu and storescp on PATH"
    }
    md = Path(result["files"]["markdown"]).read_text()
    assert "## Gateway stage" in md and "needs dcmtk" in md


def test_stage_quantile_diffs_two_scrapes_and_reads_the_buckets() -> None:
    from worker.bench.scrape import stage_quantile

    def scrape(counts: dict[str, float]) -> str:
        return "\n".join(
            f'scanstream_stage_duration_seconds_bucket{{stage="arrival",le="{le}"}} {n}'
            for le, n in counts.items()
        )

    before = scrape({"0.01": 50.0, "0.025": 50.0, "0.05": 50.0, "+Inf": 50.0})
    # Between the scrapes: 90 observations up to 10 ms, 10 between 25 and 50 ms.
    after = scrape({"0.01": 140.0, "0.025": 140.0, "0.05": 150.0, "+Inf": 150.0})
    assert stage_quantile(before, after, "arrival", 0.5) == pytest.approx(0.01 * 50 / 90)
    assert stage_quantile(before, after, "arrival", 0.99) == pytest.approx(0.025 + 0.025 * 0.9)
    assert stage_quantile(before, after, "queue", 0.99) is None  # no such stage
    assert stage_quantile(after, after, "arrival", 0.99) is None  # nothing observed between
    beyond = scrape({"0.01": 140.0, "0.025": 140.0, "0.05": 140.0, "+Inf": 150.0})
    assert stage_quantile(before, beyond, "arrival", 0.99) == 0.05  # the last finite bound
