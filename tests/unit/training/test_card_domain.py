"""Cards carry the optional input_domain and calibration; a malformed domain fails at load, and a
card without either (a bring-your-own model) still loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from worker.errors import ModelError
from worker.inference import ModelSet, default_models_dir, list_models
from worker.inference.cards import ModelCard


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    out = tmp_path / "models"
    shutil.copytree(default_models_dir(), out)
    return out


def _edit(models: Path, name: str, change: Any) -> None:
    card = models / name / "card.json"
    data = json.loads(card.read_text())
    change(data)
    card.write_text(json.dumps(data))


def test_round_trip_keeps_domain_and_calibration() -> None:
    for card in list_models():
        data = json.loads(json.dumps(card.to_dict()))
        assert "input_domain" in data and "calibration" in data
        assert ModelCard.from_dict(data, card.path) == card


def test_a_card_without_domain_or_calibration_loads(models_copy: Path) -> None:
    def strip(data: dict[str, Any]) -> None:
        del data["input_domain"], data["calibration"]

    _edit(models_copy, "lesion-cnn", strip)
    _edit(models_copy, "lesion-svm", strip)
    cards = list_models(models_copy)
    assert all(c.input_domain is None and c.calibration is None for c in cards)
    assert all("input_domain" not in c.to_dict() for c in cards)
    ModelSet.load(models_copy)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(input_domain=[1, 2]), "input_domain must be a JSON object"),
        (lambda d: d.update(calibration="T=2"), "calibration must be a JSON object"),
        (lambda d: d["input_domain"].update(rows=[512, 128]), "rows: min 512.0 exceeds max"),
        (lambda d: d["input_domain"].update(values=[1]), "input_domain is malformed"),
        (lambda d: d["input_domain"]["features"].update(threshold=0), "threshold must be > 0"),
        (
            lambda d: d["input_domain"]["features"]["mean"].pop(),
            "mean, scale, precision must fit names",
        ),
        (lambda d: d["input_domain"]["features"].pop("precision"), "features is malformed"),
    ],
)
def test_a_malformed_domain_fails_at_load(models_copy: Path, change: Any, match: str) -> None:
    _edit(models_copy, "lesion-svm", change)
    with pytest.raises(ModelError, match=match) as info:
        list_models(models_copy)
    assert str(models_copy / "lesion-svm" / "card.json") in str(info.value)
