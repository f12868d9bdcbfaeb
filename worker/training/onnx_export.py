"""ONNX graphs for the trained CNN and SVM, in standard operators only.

Both graphs use opset 17 and IR version 8: onnxruntime-gpu rejects the newest IR that a fresh
``onnx`` writes by default, so the version is set explicitly. The batch dimension is dynamic
(``N``). Only default-domain operators appear (no ``ai.onnx.ml``), so both graphs can run on the
CUDA execution provider.

>>> import numpy as np
>>> from worker.training.cnn import init_params
>>> model = cnn_to_onnx(init_params(np.random.default_rng(0)))
>>> model.ir_version, model.opset_import[0].version
(8, 17)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from worker.training.cnn import CHANNELS, IMAGE_SIZE, Params

OPSET: Final = 17
IR_VERSION: Final = 8  # the IR of opset 17; accepted by every onnxruntime >= 1.13


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="scanstream.training",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_to_onnx(params: Params, temperature: float = 1.0) -> onnx.ModelProto:
    """The CNN of :mod:`worker.training.cnn` as an NCHW ONNX graph.

    Input ``image`` (N, 1, 64, 64) float32; outputs ``probability`` and ``logit`` (N,). The
    ``logit`` is the network's raw output; ``probability`` is the temperature-scaled
    ``sigmoid(logit / temperature)`` (:func:`worker.training.calibration.fit_temperature`), so a
    runtime that reads ``probability`` gets calibrated figures with no change of its own.
    """
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, not {temperature}")
    nodes, inits = [], []
    h = "image"
    for i in range(1, len(CHANNELS) + 1):
        w, b = f"conv{i}.w", f"conv{i}.b"
        inits += [_const(w, params[w].astype(np.float32)), _const(b, params[b].astype(np.float32))]
        nodes += [
            helper.make_node("Conv", [h, w, b], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("MaxPool", [f"c{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Relu", [f"p{i}"], [f"r{i}"]),
        ]
        h = f"r{i}"
    inits += [
        _const("fc.w", params["fc.w"].astype(np.float32)),
        _const("fc.b", params["fc.b"].astype(np.float32)),
        _const("axis1", np.array([1], np.int64)),
        _const("temperature", np.array([temperature], np.float32)),
    ]
    nodes += [
        helper.make_node("GlobalMaxPool", [h], ["gmax"]),
        helper.make_node("Flatten", ["gmax"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logit2d"], transB=1),
        helper.make_node("Squeeze", ["logit2d", "axis1"], ["logit"]),
        helper.make_node("Div", ["logit", "temperature"], ["scaled_logit"]),
        helper.make_node("Sigmoid", ["scaled_logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lesion_cnn",
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["N", 1, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"]),
        ],
        initializer=inits,
    )
    return _finish(graph, "Lesion CNN (demonstration only, not clinically validated).")


@dataclass(frozen=True)
class SvmParams:
    """Everything the SVM graph needs, all from a fitted scaler, SVC and Platt fit.

    decision(x) = sum_j coef_j * exp(-gamma * |(x - mean) / scale - sv_j|^2) + intercept
    probability(x) = sigmoid(platt_a * decision(x) + platt_b)
    """

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    support_vectors: np.ndarray  # (S, F), in standardised units
    dual_coef: np.ndarray  # (S,)
    intercept: float
    gamma: float
    platt_a: float
    platt_b: float


def svm_to_onnx(p: SvmParams) -> onnx.ModelProto:
    """The RBF SVM as an ONNX graph of elementary operators.

    Input ``features`` (N, F) float32 raw; outputs ``probability`` and ``decision`` (N,) float32.
    The graph computes in float64 (one Cast in, one per output): raw features reach thousands of
    HU, and with C up to 100 the float32 rounding of ``(x - mean) / scale`` alone moved decision
    values by ~1e-4; in float64 they match scikit-learn (itself float64) to ~1e-7, the float32
    rounding of the output. Squared distances are sum((z - sv)^2), not the expansion
    |z|^2 - 2 z.sv + |sv|^2, which cancels for nearby points. Every operator used has a float64
    CUDA kernel in onnxruntime.
    """
    f = p.support_vectors.shape[1]
    f64 = np.float64
    inits = [
        _const("mean", p.mean.astype(f64)),
        _const("scale", p.scale.astype(f64)),
        _const("sv", p.support_vectors.astype(f64)[None, :, :]),  # (1, S, F)
        _const("coef", p.dual_coef.astype(f64)[:, None]),  # (S, 1)
        _const("intercept", np.array([p.intercept], f64)),
        _const("neg_gamma", np.array([-p.gamma], f64)),
        _const("platt_a", np.array([p.platt_a], f64)),
        _const("platt_b", np.array([p.platt_b], f64)),
        _const("axis1", np.array([1], np.int64)),
        _const("axis2", np.array([2], np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", ["features"], ["x64"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["x64", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["z"]),
        helper.make_node("Unsqueeze", ["z", "axis1"], ["z3"]),  # (N, 1, F)
        helper.make_node("Sub", ["z3", "sv"], ["diff"]),  # (N, S, F)
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis2"], ["dist2"], keepdims=0),  # (N, S)
        helper.make_node("Mul", ["dist2", "neg_gamma"], ["scaled"]),
        helper.make_node("Exp", ["scaled"], ["kernel"]),
        helper.make_node("MatMul", ["kernel", "coef"], ["weighted"]),  # (N, 1)
        helper.make_node("Add", ["weighted", "intercept"], ["decision2d"]),
        helper.make_node("Squeeze", ["decision2d", "axis1"], ["decision64"]),
        helper.make_node("Mul", ["decision64", "platt_a"], ["platt_ax"]),
        helper.make_node("Add", ["platt_ax", "platt_b"], ["platt_z"]),
        helper.make_node("Sigmoid", ["platt_z"], ["probability64"]),
        helper.make_node("Cast", ["decision64"], ["decision"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["probability64"], ["probability"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "lesion_svm",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("decision", TensorProto.FLOAT, ["N"]),
        ],
        initializer=inits,
    )
    return _finish(graph, "Lesion RBF SVM (demonstration only, not clinically validated).")
