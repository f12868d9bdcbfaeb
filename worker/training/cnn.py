"""A compact lesion CNN written in numpy: forward pass, backward pass and Adam.

The network is small on purpose (about 6 000 parameters) so that it trains on two CPU cores in
seconds and needs no deep-learning framework (CI must not install one)::

    image (N, 1, 64, 64) in [0, 1]
    -> [Conv 3x3 pad 1 -> MaxPool 2x2 -> ReLU] x 3   (8, 16, 32 channels; 64 -> 8 pixels)
    -> GlobalMaxPool (a lesion can be anywhere: "is there a lesion detector that fires?")
    -> Gemm (32 -> 1) = logit -> Sigmoid = probability of "lesion"

Activations are kept NHWC here because then ``sliding_window_view`` yields im2col columns in
exactly the (C, kh, kw) order of an ONNX ``Conv`` weight, with no transposes; the parameters are
stored in ONNX layout (weights (K, C, 3, 3)) so that the exporter copies them verbatim.

Training is deterministic: initial weights and the minibatch order come from seeded generators,
and every operation is a fixed sequence of numpy calls.

>>> params = init_params(np.random.default_rng(0))
>>> logits = forward(params, np.zeros((2, 64, 64, 1), np.float32))[0]
>>> logits.shape
(2,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Params = dict[str, np.ndarray]
CHANNELS: Final[tuple[int, ...]] = (8, 16, 32)
IMAGE_SIZE: Final = 64


def init_params(rng: np.random.Generator) -> Params:
    """He-initialised weights in ONNX layout: ``conv{i}.w`` (K, C, 3, 3), ``conv{i}.b`` (K,)."""
    params: Params = {}
    c_in = 1
    for i, k in enumerate(CHANNELS, start=1):
        std = np.sqrt(2.0 / (c_in * 9))
        params[f"conv{i}.w"] = (rng.standard_normal((k, c_in, 3, 3)) * std).astype(np.float32)
        params[f"conv{i}.b"] = np.zeros(k, np.float32)
        c_in = k
    params["fc.w"] = (rng.standard_normal((1, c_in)) * np.sqrt(1.0 / c_in)).astype(np.float32)
    params["fc.b"] = np.zeros(1, np.float32)
    return params


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 'same' cross-correlation (as ONNX Conv) of NHWC ``x``; returns output and columns."""
    n, h, wd, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = sliding_window_view(xp, (3, 3), axis=(1, 2)).reshape(n * h * wd, c * 9)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1), cols


def _conv_backward(
    dout: np.ndarray, cols: np.ndarray, w: np.ndarray, need_dx: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    n, h, wd, k = dout.shape
    d2 = dout.reshape(-1, k)
    dw = (d2.T @ cols).reshape(w.shape)
    db = d2.sum(axis=0)
    if not need_dx:  # the first layer's input gradient is never used
        return None, dw, db
    c = w.shape[1]
    dcols = (d2 @ w.reshape(k, -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, h + 2, wd + 2, c), dout.dtype)
    for i in range(3):  # col2im: scatter each kernel tap back to its shifted window
        for j in range(3):
            dxp[:, i : i + h, j : j + wd, :] += dcols[..., i, j]
    return dxp[:, 1:-1, 1:-1, :], dw, db


_QUADRANTS: Final = ((0, 0), (0, 1), (1, 0), (1, 1))


def _pool(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max pooling of NHWC ``z``; returns the pooled map and which quadrant won.

    The winner is the first quadrant holding the maximum, so that a tie (frequent: the window
    clips air to exactly 0) sends the gradient to one input only, as an argmax would.
    """
    q = [z[:, i::2, j::2] for i, j in _QUADRANTS]
    out = np.maximum(np.maximum(q[0], q[1]), np.maximum(q[2], q[3]))
    which = np.full(out.shape, 3, np.int8)
    for k in (2, 1, 0):
        which[q[k] == out] = k
    return out, which


def _pool_backward(dout: np.ndarray, which: np.ndarray) -> np.ndarray:
    n, h, w, c = dout.shape
    dz = np.empty((n, 2 * h, 2 * w, c), dout.dtype)
    for k, (i, j) in enumerate(_QUADRANTS):
        dz[:, i::2, j::2] = np.where(which == k, dout, 0.0)
    return dz


@dataclass
class _Cache:
    cols: list[np.ndarray]
    pool: list[np.ndarray]
    relu: list[np.ndarray]
    last: np.ndarray
    gmax: np.ndarray


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, _Cache]:
    """Logits (N,) for NHWC images ``x`` (N, 64, 64, 1), and what backward needs."""
    cache = _Cache([], [], [], x, x)
    h = x
    for i in range(1, len(CHANNELS) + 1):
        z, cols = _conv(h, params[f"conv{i}.w"], params[f"conv{i}.b"])
        # MaxPool and ReLU commute exactly; pooling first makes the ReLU four times cheaper.
        pooled, which = _pool(z)
        h = np.maximum(pooled, 0.0)
        cache.cols.append(cols)
        cache.pool.append(which)
        cache.relu.append(pooled > 0)
    g = h.max(axis=(1, 2))
    cache.last = h
    cache.gmax = h == g[:, None, None, :]
    logits = g @ params["fc.w"][0] + params["fc.b"][0]
    return logits, cache


def backward(params: Params, cache: _Cache, dlogits: np.ndarray) -> Params:
    """Gradients of the loss with respect to every parameter, given dloss/dlogit (N,)."""
    g = cache.last.max(axis=(1, 2))
    grads: Params = {"fc.w": (dlogits @ g)[None, :], "fc.b": np.array([dlogits.sum()])}
    dg = dlogits[:, None] * params["fc.w"][0][None, :]
    # Split the gradient among tied maxima so that it is conserved (ties are rare, not zero).
    ties = cache.gmax.sum(axis=(1, 2), keepdims=True).astype(np.float32)
    dh = cache.gmax * (dg[:, None, None, :] / ties)
    for i in range(len(CHANNELS), 0, -1):
        dz = _pool_backward(dh * cache.relu[i - 1], cache.pool[i - 1])
        dx, dw, db = _conv_backward(dz, cache.cols[i - 1], params[f"conv{i}.w"], need_dx=i > 1)
        grads[f"conv{i}.w"], grads[f"conv{i}.b"] = dw, db
        if dx is not None:
            dh = dx
    return {k: v.astype(np.float32) for k, v in grads.items()}


def bce_with_logits(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy and its gradient wrt the logits (numerically stable form)."""
    loss = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    p = 1.0 / (1.0 + np.exp(-logits))
    return float(loss.mean()), ((p - y) / len(y)).astype(np.float32)


class Adam:
    """Adam (Kingma & Ba) with bias correction; state per parameter name."""

    def __init__(self, params: Params, lr: float, b1: float = 0.9, b2: float = 0.999) -> None:
        self.lr, self.b1, self.b2, self.t = lr, b1, b2, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: Params, grads: Params) -> None:
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = 1.0 - self.b2**self.t
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1.0 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1.0 - self.b2) * g * g
            update = self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + 1e-8)
            params[k] = (params[k] - update).astype(np.float32)


@dataclass(frozen=True)
class CnnTrainConfig:
    """Hyper-parameters; the defaults are those of the shipped model."""

    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 3e-3


def train_cnn(
    images: np.ndarray, labels: np.ndarray, seed: int, config: CnnTrainConfig = CnnTrainConfig()
) -> tuple[Params, list[float]]:
    """Train on ``images`` (N, 64, 64) float32 in [0, 1] with 0/1 ``labels``; returns the
    parameters and the mean training loss of each epoch.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((8, 64, 64), dtype=np.float32); y = np.array([0, 1] * 4, np.float32)
    >>> params, losses = train_cnn(x, y, seed=0, config=CnnTrainConfig(epochs=1, batch_size=4))
    >>> len(losses), sorted(params) == sorted(init_params(rng))
    (1, True)
    """
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    opt = Adam(params, config.learning_rate)
    x = images.astype(np.float32)[..., None]
    y = labels.astype(np.float32)
    losses = []
    for _ in range(config.epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            logits, cache = forward(params, x[idx])
            loss, dlogits = bce_with_logits(logits, y[idx])
            opt.step(params, backward(params, cache, dlogits))
            total += loss * len(idx)
        losses.append(total / len(x))
    return params, losses


def predict_logits(params: Params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N,) for images (N, 64, 64), in batches (the numpy reference of the ONNX graph)."""
    x = images.astype(np.float32)[..., None]
    parts = [forward(params, x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
