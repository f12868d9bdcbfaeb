"""The numpy CNN: analytic gradients, the ONNX export, and that training learns."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from worker.training import cnn
from worker.training.onnx_export import cnn_to_onnx


def _loss(params: cnn.Params, x: np.ndarray, y: np.ndarray) -> float:
    return cnn.bce_with_logits(cnn.forward(params, x)[0], y)[0]


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(1)
    # float64 so that central differences are accurate to ~1e-9.
    params = {
        k: v.astype(np.float64) + rng.standard_normal(v.shape) * 0.05
        for k, v in cnn.init_params(rng).items()
    }
    x = rng.random((3, 64, 64, 1))
    y = np.array([0.0, 1.0, 1.0])
    logits, cache = cnn.forward(params, x)
    grads = cnn.backward(params, cache, cnn.bce_with_logits(logits, y)[1].astype(np.float64))
    checked = 0
    for name, value in params.items():
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in value.shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += 1e-6
            minus[name][idx] -= 1e-6
            numeric = (_loss(plus, x, y) - _loss(minus, x, y)) / 2e-6
            assert grads[name][idx] == pytest.approx(numeric, rel=1e-3, abs=1e-6), (name, idx)
            checked += numeric != 0.0
    assert checked >= 10  # most probes hit live units, so the check is not vacuous


def test_onnx_graph_computes_the_numpy_network() -> None:
    rng = np.random.default_rng(2)
    params = {
        k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.1)
        for k, v in cnn.init_params(rng).items()
    }
    session = ort.InferenceSession(
        cnn_to_onnx(params).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = rng.random((5, 64, 64), dtype=np.float32)
    prob, logit = session.run(["probability", "logit"], {"image": x[:, None]})
    expected = cnn.predict_logits(params, x)
    np.testing.assert_allclose(logit, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-expected)), atol=1e-5)


def test_training_learns_a_bright_blob() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 0.02, (128, 64, 64)).astype(np.float32)
    y = np.arange(128) % 2
    for i in np.flatnonzero(y):  # a 5x5 bright square somewhere in each positive
        r, c = rng.integers(4, 56, size=2)
        x[i, r : r + 5, c : c + 5] += 0.3
    config = cnn.CnnTrainConfig(epochs=8, batch_size=16)
    params, losses = cnn.train_cnn(x, y.astype(np.float32), seed=0, config=config)
    assert losses[-1] < 0.5 * losses[0]
    called = cnn.predict_logits(params, x) > 0
    assert (called == y.astype(bool)).mean() >= 0.9


def test_training_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    x = rng.random((16, 64, 64), dtype=np.float32)
    y = (np.arange(16) % 2).astype(np.float32)
    config = cnn.CnnTrainConfig(epochs=2, batch_size=8)
    a, _ = cnn.train_cnn(x, y, seed=7, config=config)
    b, _ = cnn.train_cnn(x, y, seed=7, config=config)
    assert all(np.array_equal(a[k], b[k]) for k in a)
