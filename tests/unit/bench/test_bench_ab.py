"""The A/B harness's pure parts: the order of a round, the summary, the variant argument."""

from __future__ import annotations

import argparse

import pytest

from worker.bench.ab import _variant, figures, order, summarize


def test_rounds_alternate_which_variant_runs_first() -> None:
    variants = [("a", {}, "librdkafka"), ("b", {"X": "1"}, "librdkafka"), ("c", {}, "kafka-python")]
    assert [t for t, _, _ in order(variants, 0)] == ["a", "b", "c"]
    assert [t for t, _, _ in order(variants, 1)] == ["c", "b", "a"]
    assert [t for t, _, _ in order(variants, 2)] == ["a", "b", "c"]


def test_the_summary_takes_medians_and_counts_paired_rounds() -> None:
    rows = [
        {"variant": "a", "round": 0, "p50_ms": 30.0, "p99_ms": 60.0, "arrival_ms": None},
        {"variant": "b", "round": 0, "p50_ms": 25.0, "p99_ms": 70.0, "arrival_ms": 9.0},
        {"variant": "a", "round": 1, "p50_ms": 34.0, "p99_ms": 66.0, "arrival_ms": None},
        {"variant": "b", "round": 1, "p50_ms": 29.0, "p99_ms": 50.0, "arrival_ms": 11.0},
        {"variant": "a", "round": 2, "p50_ms": 40.0, "p99_ms": 90.0, "arrival_ms": None},
    ]
    summary = summarize(rows)
    assert summary["a"] == {"rounds": 3, "median": {"p50_ms": 34.0, "p99_ms": 66.0}}
    assert summary["b"]["median"] == {"p50_ms": 27.0, "p99_ms": 60.0, "arrival_ms": 10.0}
    # Round 2 has no "b": only the two paired rounds count.
    assert summary["b"]["lower_than_a"] == {"p50_ms": "2 of 2", "p99_ms": "1 of 2"}


def test_figures_take_the_arrival_wait_from_the_worker_stage_means_and_cpu_by_role() -> None:
    row = {"p50_ms": 1.0, "p99_ms": 2.0, "worker_stage_means": {"arrival_ms": 3.0}}
    cpu = {"cpu_ms_per_event": {"worker": 8.1, "broker": 2.0, "bench": 0.5}, "cores_busy": 1.2}
    assert figures(row, cpu) == {
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "wait_p99_ms": None,
        "compute_p50_ms": None,
        "arrival_ms": 3.0,
        "worker_cpu_ms": 8.1,
        "broker_cpu_ms": 2.0,
        "bench_cpu_ms": 0.5,
        "cores_busy": 1.2,
    }
    assert figures(row)["cores_busy"] is None  # not measured: no figure, not a zero


def test_a_variant_is_a_tag_a_load_generator_and_a_json_object() -> None:
    assert _variant('fast={"SCANSTREAM_COMMIT_INTERVAL_MS": 0}') == (
        "fast",
        {"SCANSTREAM_COMMIT_INTERVAL_MS": "0"},
        "librdkafka",
    )
    assert _variant("base={}") == ("base", {}, "librdkafka")
    assert _variant("kp:kafka-python={}") == ("kp", {}, "kafka-python")
    for bad in ("base", "={}", "base=[1]", "base={not json", "x:rdkafka={}", ":librdkafka={}"):
        with pytest.raises(argparse.ArgumentTypeError):
            _variant(bad)
