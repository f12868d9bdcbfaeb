"""Calibration: the ECE, temperature scaling, the CNN graph's baked-in temperature, and what the
shipped cards state about it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from worker.inference import list_models
from worker.training import cnn
from worker.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability,
    sigmoid,
    write_reliability_diagram,
)
from worker.training.onnx_export import cnn_to_onnx


def test_ece_by_hand() -> None:
    prob = np.array([0.05, 0.05, 0.55, 0.55, 0.95, 1.0])
    labels = np.array([0, 1, 1, 1, 1, 1])
    # Bins: [0, 0.1) holds 2 (conf 0.05, freq 0.5), [0.5, 0.6) 2 (0.55, 1), [0.9, 1] 2 (0.975, 1).
    expected = (2 * 0.45 + 2 * 0.45 + 2 * 0.025) / 6
    assert expected_calibration_error(prob, labels) == pytest.approx(expected)
    confidence, frequency, count = reliability(prob, labels)
    assert count.tolist() == [2, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert np.isnan(confidence[1]) and frequency[9] == 1.0


def test_temperature_recovers_the_generating_one() -> None:
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, 20000)
    for true_t in (0.7, 2.5):
        labels = (rng.random(logits.size) < sigmoid(logits / true_t)).astype(np.int8)
        fitted = fit_temperature(logits, labels)
        assert fitted == pytest.approx(true_t, rel=0.05)

        def nll(t: float, y: np.ndarray = labels) -> float:
            p = np.clip(sigmoid(logits / t), 1e-15, 1 - 1e-15)
            return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

        bounds = (0.05, 20.0)
        reference = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-9}).x
        assert fitted == pytest.approx(reference, rel=1e-4)  # the minimum, not just near it
        before = expected_calibration_error(sigmoid(logits), labels)
        after = expected_calibration_error(sigmoid(logits / fitted), labels)
        assert after < before


def test_cnn_graph_bakes_in_the_temperature() -> None:
    rng = np.random.default_rng(2)
    params = {
        k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.1)
        for k, v in cnn.init_params(rng).items()
    }
    session = ort.InferenceSession(
        cnn_to_onnx(params, temperature=1.7).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    x = rng.random((4, 64, 64), dtype=np.float32)
    prob, logit = session.run(["probability", "logit"], {"image": x[:, None]})
    np.testing.assert_allclose(logit, cnn.predict_logits(params, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prob, sigmoid(logit / 1.7), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        cnn_to_onnx(params, temperature=0.0)


def test_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    prob = rng.random(200)
    labels = (rng.random(200) < prob).astype(np.int8)
    path = write_reliability_diagram(tmp_path / "r.png", "t", {"a": prob, "b": prob**2}, labels)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("card", list_models(), ids=lambda c: c.name)
def test_shipped_cards_state_their_calibration(card: object) -> None:
    from worker.inference import ModelCard

    assert isinstance(card, ModelCard) and card.calibration is not None
    cal = card.calibration
    assert cal["bins"] == 10 and cal["ece_after"] < cal["ece_before"]
    assert (
        cal["method"]
        == {"image": "temperature scaling", "features": "Platt scaling"}[card.input_kind]
    )
    assert (card.path.parent / cal["diagram"]).is_file()
    assert "NOT clinically validated" in card.intended_use
    assert "say nothing about real scans" in card.evaluation["caveat"]
