"""``scanstream train``: regenerate the data, train both models, export, evaluate, write cards.

The figures in each card are measured on the held-out test split by running the exported
``model.onnx`` in onnxruntime on the CPU, i.e. on exactly what ships. The run is deterministic:
seeded data and initialisation, a fixed minibatch order, and BLAS held to one thread (a
multi-threaded BLAS may split sums differently on machines with other core counts). On the same
CPU and library versions a rerun reproduces the shipped weights and figures exactly; elsewhere
float32 rounding can differ, so the cards promise the figures within
:data:`REPRODUCIBILITY_TOLERANCE` (absolute).
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
from worker.training.cnn import CnnTrainConfig, predict_logits, train_cnn
from worker.training.data import PHANTOM_SIZE, Split, make_split
from worker.training.metrics import evaluate
from worker.training.onnx_export import IR_VERSION, OPSET, cnn_to_onnx, svm_to_onnx
from worker.training.svm import fit_svm

MODEL_VERSION: Final = "1.0.0"
#: (seed, lesion as (row, col, radius, contrast_hu) or None) of the reference phantoms.
REFERENCE_PHANTOMS: Final = ((0, None), (1, (60.0, 40.0, 5.0, 120.0)))
THRESHOLD: Final = 0.5
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
        "phantom_size": PHANTOM_SIZE,
        "lesions": "odd samples carry one worker.phantoms.random_lesion (radius 2-6 % of the "
        "field, contrast +-60..200 HU), redrawn until at least half of it is visible in the "
        "soft-tissue window (see worker.training.data)",
        "splits": {
            name: {
                "n": int(s.labels.size),
                "n_lesion": int(s.labels.sum()),
                "lesions_redrawn": s.redraws,
            }
            for name, s in splits.items()
        },
        "seed": seed,
    }


def _reference_features() -> list[dict[str, Any]]:
    """The feature vectors of fixed phantoms (one normal, one with a lesion) at training time.

    A test recomputes them: if the imaging code changes what a feature means (same names, other
    values), the SVM is stale and must be retrained, which a name check cannot see.
    """
    out = []
    for seed, lesion in REFERENCE_PHANTOMS:
        hu = ct_slice(seed, PHANTOM_SIZE, lesion=None if lesion is None else Lesion(*lesion))
        values = analyze_frame(hu, "CT").features
        out.append(
            {
                "seed": seed,
                "size": PHANTOM_SIZE,
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


def _write(out_dir: Path, model: onnx.ModelProto, card: ModelCard) -> dict[str, Any]:
    model_dir = out_dir / card.name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILE).write_bytes(model.SerializeToString())
    write_card(card, model_dir)
    return {
        "path": str(model_dir / MODEL_FILE),
        "sha256": card.sha256,
        "evaluation": card.evaluation["held_out"],
    }


def _evaluation(prob: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The card's evaluation block, the same for every shipped model."""
    return {
        "held_out": evaluate(prob, labels, THRESHOLD),
        "caveat": HELD_OUT_CAVEAT,
        "reproducibility": _reproducibility(),
    }


def _train_cnn(splits: dict[str, Split], seed: int, out_dir: Path) -> dict[str, Any]:
    train, test = splits["train"], splits["test"]
    config = CnnTrainConfig()
    params, losses = train_cnn(train.images, train.labels, seed=seed, config=config)
    model = cnn_to_onnx(params)
    data = model.SerializeToString()
    x = test.images[:, None, :, :]
    prob, logit = _evaluate_onnx(data, "image", x, ["probability", "logit"])
    parity = float(np.abs(logit - predict_logits(params, test.images)).max())
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
        "worker.inference.cnn_input; the batch axis is dynamic, one channel",
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
        evaluation=_evaluation(prob, test.labels),
        intended_use=DEMO_NOTICE,
    )
    return _write(out_dir, model, card)


def _train_svm(splits: dict[str, Split], seed: int, out_dir: Path) -> dict[str, Any]:
    train, calib, test = splits["train"], splits["calibration"], splits["test"]
    fit = fit_svm(train.features, train.labels, calib.features, calib.labels)
    model = svm_to_onnx(fit.params)
    data = model.SerializeToString()
    prob, decision = _evaluate_onnx(data, "features", test.features, ["probability", "decision"])
    parity = float(np.abs(decision - fit.decision(test.features)).max())
    if parity > SVM_PARITY_LIMIT:  # the graph must be the SVM, not an approximation of it
        raise RuntimeError(f"ONNX SVM differs from scikit-learn by {parity:.3g} > 1e-4")
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
        evaluation=_evaluation(prob, test.labels),
        intended_use=DEMO_NOTICE,
    )
    return _write(out_dir, model, card)


def train_all(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Train both models into ``out_dir/<name>/{model.onnx,card.json}``; return the figures.

    The result maps each model name to its path, sha256 and held-out evaluation, plus the
    seconds each phase took. The shipped models are ``train_all(Path("worker/models"), 0)``.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {"seed": seed, "sklearn": sklearn.__version__}
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        splits = {name: make_split(name, seed=seed) for name in ("train", "calibration", "test")}
        timings["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result["lesion-cnn"] = _train_cnn(splits, seed, out_dir)
        timings["cnn"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result["lesion-svm"] = _train_svm(splits, seed, out_dir)
        timings["svm"] = time.perf_counter() - t0
    result["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return result
