"""ModelSet: provider reporting, batch-size independence, predictions and their contract."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from worker.errors import ModelError
from worker.inference import ModelSet, Prediction, cnn_input
from worker.inference.cuda import cuda_unusable_reason

CUDA = "CUDAExecutionProvider"


def test_provider_is_the_one_in_use(models: ModelSet) -> None:
    per_model = [info["execution_provider"] for info in models.model_infos()]
    assert models.provider == ",".join(dict.fromkeys(per_model))
    # What a session really runs on, not what get_available_providers() lists.
    card = models.cards[0]
    providers = [CUDA, "CPUExecutionProvider"] if CUDA in ort.get_available_providers() else None
    fresh = ort.InferenceSession(str(card.path), providers=providers)
    assert per_model[0] == fresh.get_providers()[0]
    assert [i["name"] for i in models.model_infos()] == ["lesion-cnn", "lesion-svm"]
    assert models.provider_note


def test_require_gpu(models: ModelSet) -> None:
    if models.provider == CUDA:
        assert ModelSet.load(require_gpu=True).provider == CUDA
    else:
        with pytest.raises(ModelError, match="require_gpu"):
            ModelSet.load(require_gpu=True)


def test_cuda_fallback_is_reported_not_hidden(models: ModelSet) -> None:
    reason = cuda_unusable_reason()
    if reason is not None:  # found before any session asked for CUDA: no onnxruntime error
        assert models.provider != CUDA and reason in models.provider_note
    elif models.provider != CUDA:
        assert "fell back" in models.provider_note


def test_without_cuda_libraries_start_prints_no_onnxruntime_error() -> None:
    """The red ``Failed to load library ... providers_cuda`` line comes from onnxruntime's own
    logger (stderr of the process): a fresh process loading the models must not print it."""
    import subprocess
    import sys

    if cuda_unusable_reason() is None:
        pytest.skip("CUDA is usable here")
    run = subprocess.run(
        [sys.executable, "-c", "from worker.inference import ModelSet; ModelSet.load()"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "providers_cuda" not in run.stderr + run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("batch", [8, 32])
def test_batch_size_does_not_change_outputs(
    models: ModelSet, phantom_inputs: tuple[np.ndarray, np.ndarray, np.ndarray], batch: int
) -> None:
    images, features, _ = phantom_inputs
    images, features = images[:32], features[:32]
    one = [models.predict(images[i : i + 1], features[i : i + 1])[0][0] for i in range(32)]
    many: list[Prediction] = []
    for start in range(0, 32, batch):
        many += models.predict(images[start : start + batch], features[start : start + batch])[0]
    for a, b in zip(one, many, strict=True):
        for field in ("cnn_probability", "svm_probability", "svm_decision", "cnn_logit"):
            assert abs(getattr(a, field) - getattr(b, field)) <= 1e-5, field


def test_models_tell_lesions_from_normals(
    models: ModelSet, phantom_inputs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    # Unseen phantoms from the training distribution: a sanity check of the shipped models.
    images, features, labels = phantom_inputs
    preds, timings = models.predict(images, features)
    assert set(timings) == {"cnn", "svm"} and min(timings.values()) >= 0
    for attr in ("cnn_probability", "svm_probability"):
        called = np.array([getattr(p, attr) >= 0.5 for p in preds])
        assert (called == labels.astype(bool)).mean() >= 0.8, attr


def test_classifications_contract() -> None:
    p = Prediction(0.93, 0.2, -1.1, cnn_logit=2.6)
    cnn, svm = p.to_classifications()
    assert cnn == {
        "model": "lesion-cnn",
        "label": "lesion",
        "probability": 0.93,
        "score": 2.6,
        "positive": True,
    }
    assert svm == {
        "model": "lesion-svm",
        "label": "normal",
        "probability": 0.2,
        "score": -1.1,
        "positive": False,
    }


def test_predict_checks_shapes(models: ModelSet) -> None:
    with pytest.raises(ValueError, match="64, 64"):
        models.predict(
            np.zeros((1, 32, 32), np.float32), np.zeros((1, models.feature_count), np.float32)
        )
    with pytest.raises(ValueError, match="features"):
        models.predict(np.zeros((2, 64, 64), np.float32), np.zeros((1, 3), np.float32))
    assert (
        models.predict(
            np.zeros((0, 64, 64), np.float32), np.zeros((0, models.feature_count), np.float32)
        )[0]
        == []
    )


def test_cnn_input_is_area_resize() -> None:
    rng = np.random.default_rng(0)
    windowed = rng.random((128, 96), dtype=np.float32)
    expected = cv2.resize(windowed, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(cnn_input(windowed), expected)
    assert cnn_input(np.full((64, 64), 2.0, np.float32)).max() == 1.0
    with pytest.raises(ValueError):
        cnn_input(np.zeros((2, 64, 64), np.float32))
