"""The scaling stage's pure parts: the pause after a membership change, and its report."""

from __future__ import annotations

from pathlib import Path

from worker.bench.loadgen import Arrival
from worker.bench.report import render_markdown, write_reports
from worker.bench.scaling import pause_after


def _arrivals(times: dict[str, float]) -> dict[str, Arrival]:
    return {k: Arrival(t, 1, "w", None, None) for k, t in times.items()}


def test_a_pause_is_the_longest_gap_and_the_worst_latency_after_the_change() -> None:
    # Events every 0.1 s; after the change at 1.0 s nothing arrives until 2.2 s.
    sent = {f"e{i}": i / 10 for i in range(30)}
    arrived = {k: t + 0.02 for k, t in sent.items()}
    for i in range(10, 22):
        arrived[f"e{i}"] = 2.2 + i / 1000
    got = pause_after(1.0, sent, _arrivals(arrived), window_s=5.0)
    assert got["longest_gap_ms"] == round(1e3 * (2.21 - 0.92), 1)
    assert got["max_latency_ms"] == round(1e3 * (2.21 - 1.0), 1)


def test_no_change_in_the_window_is_no_pause() -> None:
    sent = {"a": 0.0}
    assert pause_after(5.0, sent, _arrivals({"a": 0.01}), 1.0) == {
        "longest_gap_ms": 0.0,
        "max_latency_ms": 0.0,
    }


def _result() -> dict[str, object]:
    return {
        "stage": "scaling",
        "partitions": 6,
        "throughput": [
            {"processes": 1, "img_s": 70.0, "per_process": 70.0},
            {"processes": 2, "img_s": 84.0, "per_process": 42.0},
        ],
        "size256_1_process_img_s": 250.0,
        "size512_1_process_img_s": 70.0,
        "rebalance": {
            "rate_events_s": 42.0,
            "steady_latency": {"p50_ms": 25.0, "p99_ms": 60.0},
            "scale_up_2_to_3": {"longest_gap_ms": 2100.0, "max_latency_ms": 2400.0},
        },
        "command": "scanstream bench --stage scaling --results results",
    }


def test_the_report_shows_throughput_per_process_and_each_pause(tmp_path: Path) -> None:
    md = render_markdown(_result())
    assert "| 2 | 84.0 | 42.0 |" in md
    assert "256x256 slices: 250.0 img/s" in md
    assert "| scale_up_2_to_3 | 2100.0 | 2400.0 |" in md
    files = write_reports(_result(), tmp_path, "scaling")
    assert Path(files["markdown"]).read_text().count("## Scaling") == 1
