"""bench_imaging: the keys `scanstream bench --stage imaging` prints, on a tiny workload."""

from __future__ import annotations

import json

import cv2
import pytest

from worker.bench.imaging import bench_imaging
from worker.imaging import STAGES


def test_bench_reports_every_stage_and_the_total() -> None:
    threads = cv2.getNumThreads()
    try:
        result = bench_imaging(n_slices=3, size=64)
        assert cv2.getNumThreads() == 1  # one core
    finally:
        cv2.setNumThreads(threads)
    stage_keys = {"to_float_ms", *(f"{s}_ms" for s in STAGES)}
    assert stage_keys | {"total_ms_per_slice", "slices"} <= set(result)  # and the yardsticks
    assert result["slices"] == 3
    assert all(result[k] >= 0 for k in stage_keys)
    assert result["total_ms_per_slice"] == pytest.approx(sum(result[k] for k in stage_keys))
    assert json.loads(json.dumps(result)) == result  # one JSON line, as the CLI prints it


def test_bench_rejects_an_empty_workload() -> None:
    with pytest.raises(ValueError):
        bench_imaging(n_slices=0)
