"""bench_imaging against its yardsticks: keys, arithmetic and the report, on a tiny workload.

Structure and consistency only: nothing here judges a time, so it holds on any machine.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import worker.phantoms
from worker.bench.baselines import RECIPE_STEPS, floor_ms, recipe_ms
from worker.bench.imaging import bench_imaging
from worker.bench.report import IMAGING_TARGETS, render_markdown, write_reports
from worker.imaging import STAGES, ImagingConfig

OURS = ("to_float", *STAGES)


@pytest.fixture(autouse=True)
def _restore_cv2_threads() -> Iterator[None]:
    threads = cv2.getNumThreads()
    yield
    cv2.setNumThreads(threads)


@pytest.fixture(scope="module")
def result() -> dict[str, float]:
    threads = cv2.getNumThreads()
    try:
        return bench_imaging(n_slices=2, size=64, noise_hu=7.0)
    finally:
        cv2.setNumThreads(threads)


def test_every_stage_has_ours_a_floor_and_a_ratio(result: dict[str, float]) -> None:
    for name in OURS:
        ours, floor = result[f"{name}_ms"], result[f"floor_{name}_ms"]
        assert ours >= 0 and floor >= 0
        assert result[f"ratio_to_floor_{name}"] == pytest.approx(ours / floor, rel=1e-9)
    assert result["total_ms_per_slice"] == pytest.approx(sum(result[f"{n}_ms"] for n in OURS))
    assert result["floor_total_ms"] == pytest.approx(sum(result[f"floor_{n}_ms"] for n in OURS))
    assert result["ratio_to_floor"] == pytest.approx(
        result["total_ms_per_slice"] / result["floor_total_ms"], rel=1e-9
    )


def test_the_recipe_steps_sum_and_ratio(result: dict[str, float]) -> None:
    steps = [result[f"recipe_{n}_ms"] for n in RECIPE_STEPS]
    assert all(ms >= 0 for ms in steps)
    assert result["recipe_ms_per_slice"] == pytest.approx(sum(steps))
    assert result["ratio_to_recipe"] == pytest.approx(
        result["total_ms_per_slice"] / result["recipe_ms_per_slice"], rel=1e-9
    )


def test_workload_is_reported_and_the_keys_are_exactly_these(result: dict[str, float]) -> None:
    assert (result["noise_hu"], result["slices"], result["distinct_slices"]) == (7.0, 2.0, 2.0)
    expected = {"noise_hu", "slices", "distinct_slices", "total_ms_per_slice"}
    expected |= {"floor_total_ms", "ratio_to_floor", "recipe_ms_per_slice", "ratio_to_recipe"}
    for name in OURS:
        expected |= {f"{name}_ms", f"floor_{name}_ms", f"ratio_to_floor_{name}"}
    expected |= {f"recipe_{n}_ms" for n in RECIPE_STEPS}
    expected |= {"decode_bytes_ms", "decode_floor_ms", "decode_ratio_to_floor"}
    assert set(result) == expected
    assert json.loads(json.dumps(result)) == result  # one JSON document, as the CLI writes it


def test_noise_reaches_the_phantoms_and_distinct_slices_are_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, float]] = []
    real = worker.phantoms.ct_slice

    def spy(seed: int, size: int, **kw: Any) -> Any:
        seen.append((seed, kw["noise_hu"]))
        return real(seed, size, **kw)

    monkeypatch.setattr("worker.bench.imaging.ct_slice", spy)
    r = bench_imaging(n_slices=20, size=16, noise_hu=3.5)
    assert r["noise_hu"] == 3.5 and r["slices"] == 20.0
    assert r["distinct_slices"] == 16.0 == len(seen)
    assert {noise for _, noise in seen} == {3.5}
    assert inspect.signature(bench_imaging).parameters["noise_hu"].default == 25.0


@pytest.mark.parametrize("denoise", ["gaussian", "median", "mean", "none"])
def test_floors_follow_the_configured_denoiser(denoise: Any) -> None:
    stored = np.full((32, 32), 1024, np.uint16)
    stored[8:24, 8:24] += 300
    floors = floor_ms(stored, -1024.0, ImagingConfig(denoise=denoise))
    assert tuple(floors) == OURS and all(ms >= 0 for ms in floors.values())
    recipe = recipe_ms(stored, -1024.0)
    assert tuple(recipe) == RECIPE_STEPS and all(ms >= 0 for ms in recipe.values())


def _fake(**overrides: float) -> dict[str, Any]:
    r: dict[str, Any] = {"noise_hu": 25.0, "slices": 100.0, "distinct_slices": 16.0}
    for i, name in enumerate(OURS):
        r[f"{name}_ms"], r[f"floor_{name}_ms"] = 2.0 * (i + 1), float(i + 1)
        r[f"ratio_to_floor_{name}"] = 2.0
    r.update(total_ms_per_slice=42.0, floor_total_ms=21.0, ratio_to_floor=2.0)
    r.update({f"recipe_{n}_ms": 1.5 for n in RECIPE_STEPS})
    r.update(recipe_ms_per_slice=7.5, ratio_to_recipe=5.6)
    r.update(overrides)
    return r


def test_markdown_tables_each_stage_against_floor_and_recipe(tmp_path: Path) -> None:
    files = write_reports({**_fake(), "command": "scanstream bench --stage imaging"}, tmp_path, "x")
    md = Path(files["markdown"]).read_text()
    assert "| stage | ours ms | floor ms | ours / floor | recipe ms |" in md
    assert "| window | 4 | 2 | 2 | 1.5 |" in md
    assert "| features | 12.0 | 6 | 2 | n/a |" in md  # the recipe has no feature vector
    assert "| total | 42.0 | 21.0 | 2 | 7.5 |" in md
    assert "100 slices (16 distinct), noise 25 HU" in md
    assert IMAGING_TARGETS == {"ratio_to_floor": 2.0, "ratio_to_recipe": 1.0}
    assert "ratio_to_floor (ours / floors): 2, met (<= 2)" in md
    assert "ratio_to_recipe (ours / recipe): 5.6, not met (<= 1)" in md


def test_markdown_of_a_full_run_shows_the_nested_imaging_table() -> None:
    md = render_markdown({"imaging": _fake(ratio_to_floor=1.5), "inference": {"batch_1_ms": 0.3}})
    assert "## Imaging stage" in md and "| sobel | 8 | 4 | 2 | 1.5 |" in md
    assert "ratio_to_floor (ours / floors): 1.5, met (<= 2)" in md
    assert "## Inference stage" in md and "| batch_1_ms | 0.3 |" in md
