"""Model cards and sha256 verification of the shipped models, and of tampered copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from worker.errors import ModelError
from worker.inference import DEMO_NOTICE, ModelSet, default_models_dir, list_models, verify_models
from worker.inference.cards import sha256_bytes


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(default_models_dir(), dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_shipped_cards_describe_their_models() -> None:
    cards = {c.name: c for c in list_models()}
    assert set(cards) == {"lesion-cnn", "lesion-svm"}
    for card in cards.values():
        assert card.path.is_file()
        assert card.sha256 == sha256_bytes(card.path.read_bytes())
        assert card.labels == ("normal", "lesion")
        assert card.intended_use == DEMO_NOTICE and "NOT clinically validated" in DEMO_NOTICE
        held_out = card.evaluation["held_out"]
        assert {"auc", "sensitivity", "specificity", "n"} <= set(held_out)
        assert held_out["n"] >= 500
        assert card.input_shape[0] is None  # dynamic batch
    assert cards["lesion-cnn"].input_shape == (None, 1, 64, 64)
    assert cards["lesion-svm"].feature_names is not None


def test_verify_shipped_models_ok() -> None:
    results = verify_models()
    assert len(results) == 2
    assert all(ok for _, ok, _ in results), results


def test_verify_names_the_tampered_file(models_copy: Path) -> None:
    target = models_copy / "lesion-svm" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    target.write_bytes(bytes(data))
    results = {path: (ok, msg) for path, ok, msg in verify_models(models_copy)}
    ok, message = results[str(target)]
    assert not ok and "sha256 mismatch" in message and str(target) in message
    assert results[str(models_copy / "lesion-cnn" / "model.onnx")][0]


def test_load_refuses_a_tampered_model(models_copy: Path) -> None:
    target = models_copy / "lesion-cnn" / "model.onnx"
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256 mismatch") as info:
        ModelSet.load(models_copy)
    assert str(target) in str(info.value)


def test_missing_model_file_is_named(models_copy: Path) -> None:
    target = models_copy / "lesion-svm" / "model.onnx"
    target.unlink()
    [(path, _ok, message)] = [r for r in verify_models(models_copy) if not r[1]]
    assert path == str(target) and "missing" in message
    with pytest.raises(ModelError, match="model file is missing"):
        ModelSet.load(models_copy)


def test_missing_card_is_named(models_copy: Path) -> None:
    card = models_copy / "lesion-cnn" / "card.json"
    card.unlink()
    [(path, _ok, message)] = [r for r in verify_models(models_copy) if not r[1]]
    assert path == str(card) and "missing model card" in message
    with pytest.raises(ModelError, match="missing model card"):
        ModelSet.load(models_copy)


def test_malformed_card_is_named(models_copy: Path) -> None:
    card = models_copy / "lesion-cnn" / "card.json"
    data = json.loads(card.read_text())
    del data["sha256"]
    card.write_text(json.dumps(data))
    [(path, _ok, message)] = [r for r in verify_models(models_copy) if not r[1]]
    assert path == str(card) and "sha256" in message


def test_changed_feature_vector_fails_start(models_copy: Path) -> None:
    card = models_copy / "lesion-svm" / "card.json"
    data = json.loads(card.read_text())
    data["feature_names"] = [*data["feature_names"][1:], data["feature_names"][0]]
    card.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="FEATURE_NAMES"):
        ModelSet.load(models_copy)


def test_empty_or_absent_directory(tmp_path: Path) -> None:
    [(path, ok, message)] = verify_models(tmp_path / "nowhere")
    assert path == str(tmp_path / "nowhere")
    assert not ok and "does not exist" in message
    with pytest.raises(ModelError, match="no model directories"):
        ModelSet.load(tmp_path)


def test_card_round_trips_through_json() -> None:
    from worker.inference.cards import ModelCard

    for card in list_models():
        again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())), card.path)
        assert again == card


def test_card_must_match_the_graph(models_copy: Path) -> None:
    card = models_copy / "lesion-cnn" / "card.json"
    data = json.loads(card.read_text())
    data["input_name"] = "pixels"
    card.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="input_name 'pixels'") as info:
        ModelSet.load(models_copy)
    assert str(models_copy / "lesion-cnn" / "model.onnx") in str(info.value)


def test_a_users_own_model_loads_from_its_card(models_copy: Path) -> None:
    # As documented in worker.inference: a directory per model, named by its card.
    (models_copy / "lesion-cnn").rename(models_copy / "my-cnn")
    card = models_copy / "my-cnn" / "card.json"
    data = json.loads(card.read_text())
    data.update(name="my-cnn", version="2.3", decision_threshold=0.7)
    card.write_text(json.dumps(data))
    models = ModelSet.load(models_copy)
    info = models.model_infos()[0]
    assert (info["name"], info["version"]) == ("my-cnn", "2.3")
    prediction = models.predict(
        np.zeros((1, 64, 64), np.float32), np.zeros((1, models.feature_count), np.float32)
    )[0][0]
    cnn = prediction.to_classifications()[0]
    assert cnn["model"] == "my-cnn" and cnn["positive"] == (cnn["probability"] >= 0.7)
