"""The lesion SVM: scikit-learn RBF SVC on the standardised imaging feature vector, with Platt
scaling, reduced to plain arrays (:class:`SvmParams`) for the ONNX graph.

* Standardisation: ``StandardScaler`` fitted on the training split; its mean and scale go into
  the graph, so the model takes the raw feature vector.
* SVC: RBF kernel, ``gamma = 1 / (F * var(X))`` (scikit-learn's "scale", computed here so the
  value is explicit), ``C`` chosen by 3-fold stratified cross-validated AUC on the training split.
* Probability: Platt's sigmoid ``1 / (1 + exp(-(a * decision + b)))`` fitted on the calibration
  split with Platt's smoothed targets, which keep ``a`` finite when the classes separate.

>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((60, 3)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int8)
>>> fit = fit_svm(x[:40], y[:40], x[40:], y[40:])
>>> bool(np.all(np.diff(fit.params.platt_a * np.array([-1.0, 0.0, 1.0])) > 0))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from worker.training.onnx_export import SvmParams

C_GRID: Final = (1.0, 10.0, 100.0)


@dataclass(frozen=True)
class SvmFit:
    """The graph parameters, the fitted scikit-learn objects (the reference), and the search."""

    params: SvmParams
    scaler: StandardScaler
    svc: SVC
    cv_auc: dict[str, float]

    def decision(self, features: np.ndarray) -> np.ndarray:
        """scikit-learn's float64 decision values: the reference the ONNX graph must match."""
        # StandardScaler keeps float32 input in float32: cast first, or the reference itself
        # carries ~1e-4 of rounding error.
        x = self.scaler.transform(np.asarray(features, np.float64))
        return np.asarray(self.svc.decision_function(x))

    def hyperparameters(self) -> dict[str, Any]:
        p = self.params
        return {
            "kernel": "rbf",
            "C": float(self.svc.C),
            "gamma": p.gamma,
            "C_grid_cv_auc": self.cv_auc,
            "n_support_vectors": int(p.support_vectors.shape[0]),
            "platt_a": p.platt_a,
            "platt_b": p.platt_b,
        }


def platt(decision: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Platt's (2000) sigmoid fit, by Newton's method on the smoothed-target log loss.

    >>> a, b = platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    >>> a > 0 and abs(b) < 1e-6
    True
    """
    d = np.asarray(decision, np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    # Smoothed targets: the empirical priors keep the fit finite on separable data.
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * d + b)))
        w = np.maximum(p * (1.0 - p), 1e-12)
        grad = np.array([((p - t) * d).sum(), (p - t).sum()])
        hess = np.array([[(w * d * d).sum(), (w * d).sum()], [(w * d).sum(), w.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - float(step[0]), b - float(step[1])
        if np.abs(step).max() < 1e-10:
            break
    return a, b


def fit_svm(
    train_x: np.ndarray, train_y: np.ndarray, calib_x: np.ndarray, calib_y: np.ndarray
) -> SvmFit:
    """Fit scaler, SVC (C by cross-validation) and Platt sigmoid; all deterministic."""
    scaler = StandardScaler().fit(np.asarray(train_x, np.float64))
    x = scaler.transform(np.asarray(train_x, np.float64))
    y = np.asarray(train_y).astype(int)
    gamma = float(1.0 / (x.shape[1] * x.var()))
    folds = StratifiedKFold(n_splits=3, shuffle=False)  # no shuffling: nothing random
    cv_auc = {
        f"{c:g}": round(
            float(cross_val_score(SVC(C=c, gamma=gamma), x, y, cv=folds, scoring="roc_auc").mean()),
            4,
        )
        for c in C_GRID
    }
    # Highest CV AUC; on a tie the smaller C (the smoother boundary) wins.
    best_c = max(C_GRID, key=lambda c: (cv_auc[f"{c:g}"], -c))
    svc = SVC(C=best_c, gamma=gamma).fit(x, y)
    calib = svc.decision_function(scaler.transform(np.asarray(calib_x, np.float64)))
    a, b = platt(calib, calib_y)
    params = SvmParams(
        mean=np.asarray(scaler.mean_, np.float64),
        scale=np.asarray(scaler.scale_, np.float64),
        support_vectors=np.asarray(svc.support_vectors_, np.float64),
        dual_coef=np.asarray(svc.dual_coef_, np.float64)[0],
        intercept=float(svc.intercept_[0]),
        gamma=gamma,
        platt_a=a,
        platt_b=b,
    )
    return SvmFit(params, scaler, svc, cv_auc)
