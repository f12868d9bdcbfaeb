"""The input-domain check: each declared part gives its own reason, a card without a domain is
undeclared, and alerts fire only on in-domain classifications."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from worker.errors import ModelError
from worker.findings import build_alerts
from worker.inference.domain import FrameFacts, InputDomain
from worker.settings import Settings

NAMES = ("int_p01", "int_p99", "edge_density")


def domain(**extra: Any) -> InputDomain:
    raw: dict[str, Any] = {
        "modalities": ["CT"],
        "rows": [128, 512],
        "columns": [128, 512],
        "pixel_spacing_mm": [0.5, 1.0],
        "values": {"units": "HU", "p01": [-1100, -900], "p99": [0, 400]},
        "features": {
            "names": list(NAMES),
            "mean": [-1000.0, 100.0, 0.05],
            "scale": [50.0, 100.0, 0.01],
            "precision": np.eye(3).tolist(),
            "threshold": 3.0,
        },
    }
    raw.update(extra)
    return InputDomain.from_card(raw)


def facts(**changes: Any) -> FrameFacts:
    values = {
        "modality": "CT",
        "rows": 256,
        "columns": 256,
        "pixel_spacing_mm": (0.7, 0.7),
        "features": np.array([-1000.0, 100.0, 0.05], dtype=np.float32),
        "feature_names": NAMES,
    }
    values.update(changes)
    return FrameFacts(**values)


def test_a_frame_like_the_training_data_is_in_domain() -> None:
    check = domain().check(facts())
    assert check.in_domain is True and check.reasons == ()
    assert check.score == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("changes", "reasons"),
    [
        ({"modality": "MR"}, ("modality",)),
        ({"modality": None}, ("modality",)),
        ({"rows": 64}, ("size",)),
        ({"columns": 1024}, ("size",)),
        ({"pixel_spacing_mm": (2.0, 2.0)}, ("spacing",)),
        ({"pixel_spacing_mm": None}, ("spacing",)),
        # Values outside the trained range are also far from the trained features.
        ({"features": np.array([-2000.0, 100.0, 0.05], np.float32)}, ("values", "features")),
        ({"features": np.array([-1000.0, 100.0, 0.2], np.float32)}, ("features",)),
        ({"features": np.array([np.nan, 100.0, 0.05], np.float32)}, ("values", "features")),
        # Not the vector the model was described with: neither its values nor its features.
        ({"feature_names": ("a", "b", "c")}, ("values", "features")),
        ({"modality": "US", "rows": 600}, ("modality", "size")),
    ],
)
def test_each_part_outside_gives_its_reason(changes: dict[str, Any], reasons: tuple[str]) -> None:
    check = domain().check(facts(**changes))
    assert check.in_domain is False and check.reasons == reasons


def test_the_score_is_the_distance_over_the_threshold() -> None:
    check = domain().check(facts(features=np.array([-1000.0, 100.0, 0.08], np.float32)))
    assert check.score == pytest.approx(1.0) and check.in_domain is True  # on the edge: in
    check = domain().check(facts(features=np.array([-1000.0, 100.0, 0.09], np.float32)))
    assert check.score == pytest.approx(4 / 3) and check.reasons == ("features",)


def test_parts_left_out_are_not_checked() -> None:
    assert InputDomain.from_card({}).check(facts(modality="MR", rows=9)).in_domain is True


@pytest.mark.parametrize(
    "bad",
    [
        {"rows": [512, 128]},
        {"rows": "big"},
        {"features": {"names": ["a"], "mean": [0, 1], "scale": [1], "precision": [[1]]}},
        {
            "features": {
                "names": ["a"],
                "mean": [0],
                "scale": [0],
                "precision": [[1]],
                "threshold": 1,
            }
        },
    ],
)
def test_a_malformed_domain_is_a_model_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match="input_domain"):
        InputDomain.from_card(bad)


def _finding(in_domain: bool | None) -> dict[str, Any]:
    return {
        "finding_id": "0" * 32,
        "event_id": "e",
        "study_instance_uid": None,
        "series_instance_uid": None,
        "sop_instance_uid": "1.2.3",
        "modality": "CT",
        "worker_id": "w",
        "classifications": [
            {"model": "lesion-cnn", "label": "lesion", "probability": 0.99, "in_domain": in_domain}
        ],
    }


def test_alerts_fire_only_on_in_domain_classifications() -> None:
    settings = Settings()  # lesion>=0.9@CT
    assert len(build_alerts(_finding(True), settings)) == 1
    assert build_alerts(_finding(False), settings) == []
    assert build_alerts(_finding(None), settings) == []  # undeclared: never pages anyone
