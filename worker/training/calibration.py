"""Probability calibration: temperature scaling, expected calibration error, reliability diagrams.

* :func:`fit_temperature` finds the ``T`` that minimises the mean negative log-likelihood of
  ``sigmoid(logit / T)`` on a split (the CNN's calibration, Guo et al. 2017). It is fitted as
  ``beta = 1 / T``: the loss is convex in ``beta``, so Newton's method with step halving finds
  the one minimum deterministically.
* :func:`expected_calibration_error` is the ECE of the probability of the positive label over
  ``bins`` equal-width bins of [0, 1]: the share-weighted mean of ``|observed frequency of the
  positive label - mean predicted probability|`` per bin (empty bins count nothing).
* :func:`write_reliability_diagram` draws observed frequency against predicted probability per
  bin, before and after calibration, with the diagonal of perfect calibration (matplotlib,
  ``Agg`` backend: no display needed).

>>> p = np.array([0.05, 0.15, 0.95, 0.85]); y = np.array([0, 0, 1, 1])
>>> round(expected_calibration_error(p, y), 4)
0.1
>>> logits = np.array([-8.0, -4.0, 4.0, 8.0, 3.0, -3.0]); labels = np.array([0, 0, 1, 1, 0, 1])
>>> fit_temperature(logits, labels) > 1.0  # confident and sometimes wrong: soften
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

BINS: Final = 10


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large ``|x|``.

    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    out: np.ndarray = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def _nll(beta: float, logits: np.ndarray, y: np.ndarray) -> float:
    z = beta * logits
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``sigmoid(logits / T)`` on ``labels``."""
    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    beta = 1.0
    loss = _nll(beta, x, y)
    for _ in range(iterations):
        p = sigmoid(beta * x)
        grad = float(np.mean((p - y) * x))
        hess = float(np.mean(p * (1.0 - p) * x * x))
        if hess <= 1e-12:
            break
        step = grad / hess
        for _ in range(60):  # halve until the loss does not rise and beta stays positive
            candidate = beta - step
            if candidate > 0 and (new := _nll(candidate, x, y)) <= loss:
                break
            step /= 2.0
        else:
            break
        beta, loss = candidate, new
        if abs(step) < 1e-10 * max(1.0, beta):
            break
    return 1.0 / beta


def _bin_index(prob: np.ndarray, bins: int) -> np.ndarray:
    # Equal-width bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]: 1.0 falls in the last.
    return np.minimum((np.asarray(prob, np.float64) * bins).astype(np.intp), bins - 1)


def reliability(
    prob: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: the mean predicted probability, the observed frequency of the positive label
    (both NaN for an empty bin) and the count."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(labels, np.float64)
    idx = _bin_index(p, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=p, minlength=bins) / count
        frequency = np.bincount(idx, weights=y, minlength=bins) / count
    return confidence, frequency, count.astype(np.int64)


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE over ``bins`` equal-width bins (see the module docstring)."""
    confidence, frequency, count = reliability(prob, labels, bins)
    used = count > 0
    gaps = np.abs(frequency[used] - confidence[used])
    return float((count[used] * gaps).sum() / count.sum())


def write_reliability_diagram(
    path: Path,
    title: str,
    curves: dict[str, np.ndarray],
    labels: np.ndarray,
    bins: int = BINS,
) -> Path:
    """A PNG reliability diagram of each named probability array in ``curves`` (with its ECE in
    the legend), and a histogram of how many samples each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.0, 6.0), dpi=100, gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins / (len(curves) + 1)
    for k, (name, prob) in enumerate(curves.items()):
        confidence, frequency, count = reliability(prob, labels, bins)
        used = count > 0
        ece = expected_calibration_error(prob, labels, bins)
        ax.plot(
            confidence[used],
            frequency[used],
            marker="o",
            linewidth=1.5,
            label=f"{name} (ECE {ece:.3f})",
        )
        hist.bar(edges[:-1] + (k + 0.5) * width, count, width=width, align="edge", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of 'lesion'")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, linewidth=0.3)
    hist.set_yscale("log")
    hist.set_xlabel(f"predicted probability of 'lesion' ({bins} equal-width bins)")
    hist.set_ylabel("samples")
    hist.set_xticks(edges)
    hist.set_xticklabels([f"{e:.1f}" for e in edges], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" entry: the file then depends on the figures only, not on matplotlib's version.
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
