"""Held-out evaluation figures for a binary classifier: ROC AUC, sensitivity, specificity.

>>> figures = evaluate(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), threshold=0.5)
>>> figures["auc"], figures["sensitivity"], figures["specificity"]
(0.75, 0.5, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative
    (ties count one half). All pairs are compared directly: plain, and fast for held-out sets of
    a few thousand.

    >>> roc_auc(np.array([0.2, 0.2, 0.9]), np.array([0, 1, 1]))
    0.75
    """
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes in the evaluation set")
    s = np.asarray(scores, np.float64)
    pos, neg = s[y][:, None], s[~y][None, :]
    wins = (pos > neg).sum() + 0.5 * (pos == neg).sum()
    return float(wins / (n_pos * n_neg))


def evaluate(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC of ``probabilities``; sensitivity and specificity of ``probabilities >= threshold``.

    Figures are rounded to 4 decimals: the card states them, and the retraining test compares
    them, at that precision.
    """
    y = np.asarray(labels).astype(bool)
    called = np.asarray(probabilities) >= threshold
    tp, fn = int((called & y).sum()), int((~called & y).sum())
    tn, fp = int((~called & ~y).sum()), int((called & ~y).sum())
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "threshold": threshold,
        "auc": round(roc_auc(probabilities, y), 4),
        "sensitivity": round(tp / (tp + fn), 4),
        "specificity": round(tn / (tn + fp), 4),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }
