"""``scanstream train``: regenerate the data, train both models, export, evaluate, write cards.

The figures in each card are measured on the held-out test split by running the exported
``model.onnx`` in onnxruntime on the CPU, i.e. on exactly what ships. The run is deterministic:
seeded data and initialisation, a fixed minibatch order, and BLAS held to one thread (a
multi-threaded BLAS may split sums differently on machines with other core counts). On the same
CPU and library versions a rerun reproduces the shipped weights and figures exactly; elsewhere
float32 rounding can differ, so the cards promise the figures within
:data:`REPRODUCIBILITY_TOLERANCE` (absolute).

Besides the held-out figures (overall and per phantom size), each card states its calibration
(:mod:`worker.training.calibration`: temperature scaling for the CNN, baked into the graph's
``probability``; Platt scaling for the SVM; ECE before and after on the test split, with
``reliability.png`` next to the card) and its input domain (:mod:`worker.training.domain`, the
format of :mod:`worker.inference.domain`).
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from worker.imaging import FEATURE_NAMES, analyze_frame
from worker.inference.cards import DEMO_NOTICE, MODEL_FILE, ModelCard, sha256_bytes, write_card
from worker.phantoms import Lesion, ct_slice
from worker.training.calibration import (
    BINS,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
    write_reliability_diagram,
)
from worker.training.cnn import CnnTrainConfig, predict_logits, train_cnn
from worker.training.data import PHANTOM_SIZES, Split, make_split
from worker.training.domain import fit_input_domain
from worker.training.metrics import evaluate
from worker.training.onnx_export import IR_VERSION, OPSET, cnn_to_onnx, svm_to_onnx
from worker.training.svm import fit_svm

MODEL_VERSION: Final = "2.0.0"
#: (seed, size, lesion as (row, col, radius, contrast_hu) or None) of the reference phantoms.
REFERENCE_PHANTOMS: Final = (
    (0, 128, None),
    (1, 128, (60.0, 40.0, 5.0, 120.0)),
    (2, 512, None),
    (3, 512, (240.0, 160.0, 20.0, 120.0)),
)
THRESHOLD: Final = 0.5
DIAGRAM_FILE: Final = "reliability.png"
REPRODUCIBILITY_TOLERANCE: Final = 0.02
SVM_PARITY_LIMIT: Final = 1e-4  # |ONNX decision - scikit-learn decision| on the test split
LABELS: Final = ("normal", "lesion")
HELD_OUT_CAVEAT: Final = (
    "The held-out split comes from the same synthetic generator as the training data (disjoint "
    "seeds): the figures describe these phantoms only and say nothing about real scans."
)
TASK: Final = (
    "binary classification of one CT slice: focal lesion visible in the soft-tissue "
    "window (lesion) or not (normal)"
)


def _data_note(splits: dict[str, Split], seed: int) -> dict[str, Any]:
    return {
        "source": "synthetic CT phantoms (worker.phantoms.ct_slice), no patient data",
        "phantom_sizes": list(PHANTOM_SIZES),
        "sizes": "square phantoms of 128, 256 and 512 pixels in turn, a third of every split "
        "each with balanced labels: edge and texture features are per pixel and change with "
        "the size, so the models learn all three (see worker.training.data)",
        "lesions": "odd samples carry one worker.phantoms.random_lesion (radius 2-6 % of the "
        "field, contrast +-60..200 HU), redrawn until at least half of it is visible in the "
        "soft-tissue window (see worker.training.data)",
        "splits": {
            name: {
                "n": int(s.labels.size),
                "n_lesion": int(s.labels.sum()),
                "n_by_size": {
                    str(size): int((s.sizes == size).sum())
                    for size in sorted(set(s.sizes.tolist()))
                },
                "lesions_redrawn": s.redraws,
                "use": _USES[name],
            }
            for name, s in splits.items()
        },
        "seed": seed,
    }


_USES: Final = {
    "train": "model fitting; the input domain's feature Gaussian and value ranges",
    "calibration": "probability calibration (temperature / Platt); the input domain's threshold",
    "test": "held-out evaluation, calibration error, reliability diagram, in-domain share",
}


def _reference_features() -> list[dict[str, Any]]:
    """The feature vectors of fixed phantoms (one normal, one with a lesion) at training time.

    A test recomputes them: if the imaging code changes what a feature means (same names, other
    values), the SVM is stale and must be retrained, which a name check cannot see.
    """
    out = []
    for seed, size, lesion in REFERENCE_PHANTOMS:
        hu = ct_slice(seed, size, lesion=None if lesion is None else Lesion(*lesion))
        values = analyze_frame(hu, "CT").features
        out.append(
            {
                "seed": seed,
                "size": size,
                "lesion": None if lesion is None else list(lesion),
                "values": [float(v) for v in values],
            }
        )
    return out


def _evaluate_onnx(data: bytes, name: str, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in session.run(outputs, {name: x})]


def _reproducibility() -> dict[str, Any]:
    return {
        "tolerance_abs": REPRODUCIBILITY_TOLERANCE,
        "statement": "`scanstream train --seed 0` reproduced these models byte for byte "
        "(same sha256) on the machine that made them, with these library versions. Another "
        "CPU or BLAS may round float32 sums differently; tests/unit/training accepts each "
        "figure within tolerance_abs of this card",
        "versions": {
            pkg: version(pkg)
            for pkg in ("numpy", "scikit-learn", "onnx", "opencv-python-headless")
            if _installed(pkg)
        },
    }


def _installed(pkg: str) -> bool:
    try:
        version(pkg)
    except PackageNotFoundError:  # e.g. opencv installed under another distribution name
        return False
    return True


def _write(
    out_dir: Path,
    model: onnx.ModelProto,
    card: ModelCard,
    curves: dict[str, np.ndarray],
    labels: np.ndarray,
) -> dict[str, Any]:
    model_dir = out_dir / card.name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILE).write_bytes(model.SerializeToString())
    write_card(card, model_dir)
    diagram = write_reliability_diagram(
        model_dir / DIAGRAM_FILE,
        f"{card.name} {card.version}: reliability on the held-out test split (n={labels.size})",
        curves,
        labels,
    )
    assert card.input_domain is not None and card.calibration is not None
    return {
        "path": str(model_dir / MODEL_FILE),
        "sha256": card.sha256,
        "evaluation": card.evaluation["held_out"],
        "held_out_by_size": card.evaluation["held_out_by_size"],
        "calibration": card.calibration,
        "held_out_in_domain": card.input_domain["features"]["held_out_in_domain"],
        "held_out_in_domain_by_size": card.input_domain["held_out_in_domain_by_size"],
        "diagram": str(diagram),
    }


def _by_size(prob: np.ndarray, split: Split) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sorted(set(split.sizes.tolist())):
        m = split.sizes == size
        figures = evaluate(prob[m], split.labels[m], THRESHOLD)
        out[str(size)] = {k: figures[k] for k in ("n", "auc", "sensitivity", "specificity")}
    aucs = [v["auc"] for v in out.values()]
    out["auc_spread"] = round(max(aucs) - min(aucs), 4)
    return out


def _evaluation(prob: np.ndarray, test: Split) -> dict[str, Any]:
    """The card's evaluation block, the same for every shipped model."""
    return {
        "held_out": evaluate(prob, test.labels, THRESHOLD),
        "held_out_by_size": _by_size(prob, test),
        "caveat": HELD_OUT_CAVEAT,
        "reproducibility": _reproducibility(),
    }


def _calibration(
    method: str,
    parameters: dict[str, float],
    before: np.ndarray,
    after: np.ndarray,
    test: Split,
    note: str,
) -> dict[str, Any]:
    return {
        "method": method,
        **parameters,
        "fitted_on": "calibration split",
        "evaluated_on": f"held-out test split (n={test.labels.size})",
        "bins": BINS,
        "ece_definition": "expected calibration error of the probability of 'lesion': over "
        f"{BINS} equal-width bins of [0, 1], the share-weighted mean |observed frequency of "
        "'lesion' - mean predicted probability|",
        "ece_before": round(expected_calibration_error(before, test.labels), 4),
        "ece_after": round(expected_calibration_error(after, test.labels), 4),
        "note": note,
        "diagram": DIAGRAM_FILE,
    }


def _train_cnn(
    splits: dict[str, Split], seed: int, out_dir: Path, domain: dict[str, Any]
) -> dict[str, Any]:
    train, calib, test = splits["train"], splits["calibration"], splits["test"]
    config = CnnTrainConfig()
    params, losses = train_cnn(train.images, train.labels, seed=seed, config=config)
    temperature = fit_temperature(predict_logits(params, calib.images), calib.labels)
    model = cnn_to_onnx(params, temperature)
    data = model.SerializeToString()
    x = test.images[:, None, :, :]
    prob, logit = _evaluate_onnx(data, "image", x, ["probability", "logit"])
    parity = float(np.abs(logit - predict_logits(params, test.images)).max())
    calibration = _calibration(
        "temperature scaling",
        {"temperature": temperature},
        sigmoid(logit),
        prob,
        test,
        "T minimises the negative log-likelihood of sigmoid(logit / T) on the calibration "
        "split's logits; it is inside the ONNX graph: output 'probability' = "
        "sigmoid(logit / T), output 'logit' (the card's score) is the raw logit. ece_before is "
        "that of sigmoid(logit), ece_after that of the shipped probability",
    )
    card = ModelCard(
        name="lesion-cnn",
        version=MODEL_VERSION,
        task=TASK,
        input_kind="image",
        input_name="image",
        input_shape=(None, 1, 64, 64),
        input_dtype="float32",
        outputs={"probability": "probability", "score": "logit"},
        preprocessing="worker.imaging.analyze_frame(hu, 'CT').windowed (soft-tissue window "
        "W400/L40 of the raw HU frame, [0, 1]) resized to 64x64 with cv2.INTER_AREA by "
        "worker.inference.cnn_input; the batch axis is dynamic, one channel. The output "
        "'probability' is temperature-scaled (see calibration); 'logit' is raw",
        labels=LABELS,
        decision_threshold=THRESHOLD,
        sha256=sha256_bytes(data),
        training={
            "data": _data_note(splits, seed),
            "method": "numpy CNN (worker.training.cnn): 3 x [Conv3x3 -> MaxPool2 -> ReLU] "
            "(8, 16, 32 channels) -> GlobalMaxPool -> Gemm -> Sigmoid; binary cross-entropy, "
            "Adam, He initialisation, float32",
            "hyperparameters": {
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
            },
            "final_epoch_loss": round(losses[-1], 4),
            "onnx_vs_numpy_max_abs_logit_diff": parity,
            "onnx": {"ir_version": IR_VERSION, "opset": OPSET},
        },
        evaluation=_evaluation(prob, test),
        intended_use=DEMO_NOTICE,
        input_domain=domain,
        calibration=calibration,
    )
    curves = {"before: sigmoid(logit)": sigmoid(logit), f"after: T = {temperature:.2f}": prob}
    return _write(out_dir, model, card, curves, test.labels)


def _train_svm(
    splits: dict[str, Split], seed: int, out_dir: Path, domain: dict[str, Any]
) -> dict[str, Any]:
    train, calib, test = splits["train"], splits["calibration"], splits["test"]
    fit = fit_svm(train.features, train.labels, calib.features, calib.labels)
    model = svm_to_onnx(fit.params)
    data = model.SerializeToString()
    prob, decision = _evaluate_onnx(data, "features", test.features, ["probability", "decision"])
    parity = float(np.abs(decision - fit.decision(test.features)).max())
    if parity > SVM_PARITY_LIMIT:  # the graph must be the SVM, not an approximation of it
        raise RuntimeError(f"ONNX SVM differs from scikit-learn by {parity:.3g} > 1e-4")
    calibration = _calibration(
        "Platt scaling",
        {"platt_a": fit.params.platt_a, "platt_b": fit.params.platt_b},
        sigmoid(decision),
        prob,
        test,
        "probability = sigmoid(a * decision + b), a and b fitted on the calibration split's "
        "decision values with Platt's smoothed targets (inside the ONNX graph). ece_before is "
        "that of the uncalibrated sigmoid(decision), ece_after that of the shipped probability",
    )
    card = ModelCard(
        name="lesion-svm",
        version=MODEL_VERSION,
        task=TASK,
        input_kind="features",
        input_name="features",
        input_shape=(None, len(FEATURE_NAMES)),
        input_dtype="float32",
        outputs={"probability": "probability", "score": "decision"},
        preprocessing="the raw feature vector of worker.imaging.analyze_frame(hu, 'CT') "
        "(default ImagingConfig), in the order of feature_names; the standardisation "
        "(x - mean) / scale is inside the graph, so no scaling before the model",
        labels=LABELS,
        decision_threshold=THRESHOLD,
        sha256=sha256_bytes(data),
        feature_names=tuple(FEATURE_NAMES),
        training={
            "data": _data_note(splits, seed),
            "method": "scikit-learn SVC (libsvm), RBF kernel on StandardScaler-standardised "
            "features; C by 3-fold stratified CV AUC on the train split; Platt sigmoid "
            "1/(1+exp(-(a*decision+b))) fitted on the calibration split with smoothed targets. "
            "Exported as plain ONNX operators computing in float64 (no ai.onnx.ml)",
            "hyperparameters": fit.hyperparameters(),
            "onnx_vs_sklearn_max_abs_decision_diff": parity,
            "reference_features": _reference_features(),
            "onnx": {"ir_version": IR_VERSION, "opset": OPSET},
        },
        evaluation=_evaluation(prob, test),
        intended_use=DEMO_NOTICE,
        input_domain=domain,
        calibration=calibration,
    )
    curves = {"before: sigmoid(decision)": sigmoid(decision), "after: Platt": prob}
    return _write(out_dir, model, card, curves, test.labels)


def train_all(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Train both models into ``out_dir/<name>/{model.onnx,card.json,reliability.png}``; return
    the figures.

    The result maps each model name to its path, sha256, held-out evaluation (overall and by
    phantom size), calibration figures and held-out in-domain shares, plus the seconds each
    phase took. Both cards carry the same ``input_domain`` (:mod:`worker.training.domain`).
    The shipped models are ``train_all(Path("worker/models"), 0)``.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {"seed": seed, "sklearn": sklearn.__version__}
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        splits = {name: make_split(name, seed=seed) for name in ("train", "calibration", "test")}
        timings["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        domain = fit_input_domain(splits["train"], splits["calibration"], splits["test"])
        timings["domain"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result["lesion-cnn"] = _train_cnn(splits, seed, out_dir, domain)
        timings["cnn"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result["lesion-svm"] = _train_svm(splits, seed, out_dir, domain)
        timings["svm"] = time.perf_counter() - t0
    result["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return result
