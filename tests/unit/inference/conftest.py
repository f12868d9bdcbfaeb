"""Fixtures for the inference tests: the shipped models (loaded once) and real phantom inputs."""

from __future__ import annotations

import numpy as np
import pytest

from worker.imaging import analyze_frame
from worker.inference import ModelSet, cnn_input
from worker.training.data import sample_slice


@pytest.fixture(scope="session")
def models() -> ModelSet:
    return ModelSet.load()


@pytest.fixture(scope="session")
def phantom_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 CT phantoms as in training but from other seeds (every other one with a lesion
    visible in the soft-tissue window): CNN inputs, features, labels."""
    rng = np.random.default_rng(123)
    images, features, labels = [], [], []
    for i in range(40):
        hu, _ = sample_slice(rng, with_lesion=bool(i % 2))
        analysis = analyze_frame(hu, "CT")
        images.append(cnn_input(analysis.windowed))
        features.append(analysis.features)
        labels.append(i % 2)
    return np.stack(images), np.stack(features).astype(np.float32), np.array(labels)
