"""The RBF SVM in plain ONNX operators equals scikit-learn's decision function."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from worker.training.onnx_export import svm_to_onnx
from worker.training.svm import fit_svm, platt


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    # Raw features on very different scales (HU-like thousands next to fractions), as imaging's.
    rng = np.random.default_rng(0)
    n = 500
    y = (np.arange(n) % 2).astype(np.int8)
    x = rng.standard_normal((n, 6)) + y[:, None] * 0.8
    x *= np.array([1000.0, 50.0, 1.0, 0.01, 3.0, 200.0])
    x += np.array([-900.0, 40.0, 0.0, 0.5, 10.0, 1000.0])
    return x.astype(np.float32), y


def test_decision_matches_sklearn_on_held_out(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    fit = fit_svm(x[:300], y[:300], x[300:400], y[300:400])
    model = svm_to_onnx(fit.params)
    assert {n.domain for n in model.graph.node} == {""}
    assert "SVMClassifier" not in {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    held_out = x[400:]
    prob, decision = session.run(["probability", "decision"], {"features": held_out})
    reference = fit.svc.decision_function(fit.scaler.transform(held_out.astype(np.float64)))
    assert np.abs(decision - reference).max() <= 1e-4
    expected = 1 / (1 + np.exp(-(fit.params.platt_a * reference + fit.params.platt_b)))
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    assert ((prob >= 0.5) == (reference >= -fit.params.platt_b / fit.params.platt_a)).all()


def test_graph_limits(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = blobs
    model = svm_to_onnx(fit_svm(x[:200], y[:200], x[200:300], y[200:300]).params)
    assert model.ir_version <= 10 and model.opset_import[0].version <= 17
    onnx.checker.check_model(model, full_check=True)


def test_platt_is_finite_on_separable_scores() -> None:
    decision = np.array([-3.0, -2.0, -1.5, 1.5, 2.0, 3.0])
    a, b = platt(decision, np.array([0, 0, 0, 1, 1, 1]))
    assert 0 < a < 50 and np.isfinite(b)
