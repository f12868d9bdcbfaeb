"""`scanstream train` (train_all) reproduces the shipped models' figures, and the SVM's input is
still what it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worker.imaging import analyze_frame
from worker.inference import ModelSet, default_models_dir, list_models, verify_models
from worker.phantoms import Lesion, ct_slice
from worker.training import train_all


def test_retraining_reproduces_the_shipped_figures(tmp_path: Path) -> None:
    result = train_all(tmp_path, seed=0)
    assert all(ok for _, ok, _ in verify_models(tmp_path))
    ModelSet.load(tmp_path)  # a fresh training is a loadable model set
    for card in list_models():
        shipped = card.evaluation["held_out"]
        tolerance = card.evaluation["reproducibility"]["tolerance_abs"]
        fresh = result[card.name]["evaluation"]
        for figure in ("auc", "sensitivity", "specificity"):
            assert abs(fresh[figure] - shipped[figure]) <= tolerance, (card.name, figure)
        assert fresh["n"] == shipped["n"]
        retrained = json.loads((tmp_path / card.name / "card.json").read_text())
        assert retrained["training"]["data"] == card.training["data"]
    svm = json.loads((tmp_path / "lesion-svm" / "card.json").read_text())
    assert svm["training"]["onnx_vs_sklearn_max_abs_decision_diff"] <= 1e-4


def test_shipped_svm_sees_the_features_it_was_trained_on() -> None:
    # Same names are checked at load; same *values* need the imaging code itself.
    [svm] = [c for c in list_models() if c.input_kind == "features"]
    references = svm.training["reference_features"]
    assert len(references) == 2 and references[1]["lesion"] is not None
    for ref in references:
        lesion = None if ref["lesion"] is None else Lesion(*ref["lesion"])
        now = analyze_frame(ct_slice(ref["seed"], ref["size"], lesion=lesion), "CT").features
        np.testing.assert_allclose(
            now,
            np.array(ref["values"], np.float32),
            rtol=1e-5,
            atol=1e-6,
            err_msg="imaging features changed: run `scanstream train --out worker/models`",
        )


def test_shipped_models_live_in_the_package() -> None:
    assert default_models_dir() == Path(__file__).resolve().parents[3] / "worker" / "models"
