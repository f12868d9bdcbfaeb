"""`scanstream train` (train_all) reproduces the shipped models' figures, and the SVM's input is
still what it was trained on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from worker.imaging import analyze_frame
from worker.inference import ModelSet, default_models_dir, list_models, verify_models
from worker.inference.domain import InputDomain
from worker.phantoms import Lesion, ct_slice
from worker.training import train_all

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _close(fresh: float, shipped: float, tolerance: float, what: tuple[str, ...]) -> None:
    assert abs(fresh - shipped) <= tolerance, (*what, fresh, shipped)


def test_retraining_reproduces_the_shipped_figures(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    result = train_all(tmp_path, seed=0)
    print(f"train_all: {time.perf_counter() - t0:.1f} s, phases {result['seconds']}")
    assert all(ok for _, ok, _ in verify_models(tmp_path))
    ModelSet.load(tmp_path)  # a fresh training is a loadable model set
    for card in list_models():
        tolerance = card.evaluation["reproducibility"]["tolerance_abs"]
        fresh = result[card.name]
        shipped = card.evaluation["held_out"]
        for figure in ("auc", "sensitivity", "specificity"):
            _close(fresh["evaluation"][figure], shipped[figure], tolerance, (card.name, figure))
        assert fresh["evaluation"]["n"] == shipped["n"]
        for size, figures in card.evaluation["held_out_by_size"].items():
            if size == "auc_spread":
                continue
            _close(
                fresh["held_out_by_size"][size]["auc"], figures["auc"], tolerance, (card.name, size)
            )
        assert card.calibration is not None and card.input_domain is not None
        for figure in ("ece_before", "ece_after"):
            _close(
                fresh["calibration"][figure],
                card.calibration[figure],
                tolerance,
                (card.name, figure),
            )
        shipped_share = card.input_domain["features"]["held_out_in_domain"]
        _close(fresh["held_out_in_domain"], shipped_share, tolerance, (card.name, "in domain"))
        assert fresh["held_out_in_domain"] >= 0.99
        assert min(fresh["held_out_in_domain_by_size"].values()) >= 0.99
        retrained = json.loads((tmp_path / card.name / "card.json").read_text())
        assert retrained["training"]["data"] == card.training["data"]
        assert retrained["intended_use"] == card.intended_use
        InputDomain.from_card(retrained["input_domain"])  # what the runtime will parse
        diagram = tmp_path / card.name / retrained["calibration"]["diagram"]
        assert diagram.read_bytes().startswith(PNG_SIGNATURE)
        assert (card.path.parent / card.calibration["diagram"]).read_bytes()[:8] == PNG_SIGNATURE
    svm = json.loads((tmp_path / "lesion-svm" / "card.json").read_text())
    assert svm["training"]["onnx_vs_sklearn_max_abs_decision_diff"] <= 1e-4


def test_shipped_svm_sees_the_features_it_was_trained_on() -> None:
    # Same names are checked at load; same *values* need the imaging code itself.
    [svm] = [c for c in list_models() if c.input_kind == "features"]
    references = svm.training["reference_features"]
    assert any(r["lesion"] is not None for r in references)
    assert {r["size"] for r in references} >= {128, 512}  # the smallest and largest trained on
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
