"""AUC, sensitivity and specificity against scikit-learn's implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from worker.training.metrics import evaluate, roc_auc


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding creates many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_sensitivity_specificity() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(rng.random(200) * 0.7 + 0.3 * labels, 0, 1)
    figures = evaluate(probs, labels, 0.5)
    called = (probs >= 0.5).astype(int)
    assert figures["sensitivity"] == round(recall_score(labels, called), 4)
    assert figures["specificity"] == round(recall_score(1 - labels, 1 - called), 4)
    assert sum(figures["confusion"].values()) == 200


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))
