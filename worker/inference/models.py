"""The loaded model set: one image classifier (CNN) and one feature classifier (SVM) on ONNX
Runtime, with the execution provider really in use.

Sessions ask for CUDA first and CPU as fallback. ONNX Runtime silently falls back to CPU when
CUDA cannot start (no GPU, missing libraries), and ``get_available_providers()`` lists CUDA all
the same on an onnxruntime-gpu install, so the provider reported here is always
``session.get_providers()[0]`` of the created session; ``require_gpu`` turns a fallback into a
:class:`~worker.errors.ModelError` at start. On CUDA, batches are padded to a few bucket shapes
that are warmed up at load and run through IOBinding (:mod:`worker.inference.binding`; not yet
run on a GPU); on the CPU they run as given.

>>> import numpy as np
>>> models = ModelSet.load()
>>> preds, timings = models.predict(np.zeros((2, 64, 64), np.float32),
...                                 np.zeros((2, models.feature_count), np.float32))
>>> len(preds), sorted(timings)
(2, ['cnn', 'svm'])
>>> preds[0].to_classifications()[0]["model"]
'lesion-cnn'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from worker.errors import ModelError
from worker.inference.binding import DEFAULT_MAX_BATCH, BatchRunner, RunMode, describe
from worker.inference.cards import ModelCard, list_models, read_verified
from worker.inference.cuda import cuda_unusable_reason

log = logging.getLogger(__name__)

CNN_SIZE: Final = 64
CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"


def cnn_input(windowed: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """A windowed slice (H, W) in [0, 1] as the CNN's (64, 64) float32 input.

    Area interpolation averages whole source pixels when shrinking (no aliasing of the noise),
    and it is the resize used in training, so serving sees exactly what the model learnt on.

    >>> cnn_input(np.ones((128, 128), np.float32)).shape
    (64, 64)
    """
    if windowed.ndim != 2:
        raise ValueError(f"cnn_input expects a 2-D windowed slice, got shape {windowed.shape}")
    img: npt.NDArray[Any] = np.ascontiguousarray(windowed, dtype=np.float32)
    if img.shape != (CNN_SIZE, CNN_SIZE):
        img = cv2.resize(img, (CNN_SIZE, CNN_SIZE), interpolation=cv2.INTER_AREA)
    out: npt.NDArray[np.float32] = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True)
class Prediction:
    """Both models' outputs for one frame. Probabilities are those of the positive label."""

    cnn_probability: float
    svm_probability: float
    svm_decision: float
    cnn_logit: float = float("nan")
    cnn_model: str = "lesion-cnn"
    svm_model: str = "lesion-svm"
    cnn_threshold: float = 0.5
    svm_threshold: float = 0.5
    labels: tuple[str, str] = ("normal", "lesion")

    def to_classifications(self) -> list[dict[str, Any]]:
        """One entry per model: ``{"model", "label", "probability", "score", "positive"}``.

        >>> Prediction(0.9, 0.2, -1.5).to_classifications()[1]["label"]
        'normal'
        """
        out = []
        for model, p, score, threshold in (
            (self.cnn_model, self.cnn_probability, self.cnn_logit, self.cnn_threshold),
            (self.svm_model, self.svm_probability, self.svm_decision, self.svm_threshold),
        ):
            positive = p >= threshold
            out.append(
                {
                    "model": model,
                    "label": self.labels[1] if positive else self.labels[0],
                    "probability": p,
                    "score": score,
                    "positive": positive,
                }
            )
        return out


@dataclass(frozen=True)
class _Loaded:
    card: ModelCard
    session: ort.InferenceSession
    provider: str


def _providers(want_cuda: bool) -> list[str]:
    available = ort.get_available_providers()
    return [CUDA, CPU] if want_cuda and CUDA in available else [CPU]


def _check_io(card: ModelCard, session: ort.InferenceSession) -> None:
    """The session's input and outputs must be those the card promises."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != card.input_name:
        names = [i.name for i in inputs]
        raise ModelError(
            f"{card.path}: graph inputs {names} != card input_name {card.input_name!r}"
        )
    if inputs[0].type != "tensor(float)":
        raise ModelError(f"{card.path}: input type {inputs[0].type} is not tensor(float)")
    graph_shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    if graph_shape != list(card.input_shape):
        raise ModelError(f"{card.path}: input shape {graph_shape} != card {list(card.input_shape)}")
    outputs = {o.name for o in session.get_outputs()}
    missing = set(card.outputs.values()) - outputs
    if missing:
        raise ModelError(
            f"{card.path}: card outputs {sorted(missing)} not in graph {sorted(outputs)}"
        )


def _session_options() -> ort.SessionOptions:
    """One intra-op thread and no spinning: the models are small (a 64x64 CNN, an SVM), and a
    worker scales by processes. ONNX Runtime's default gives each session a pool of one thread
    per core that spins after every run; on two cores the two sessions' pool threads burnt
    about 21 ms of CPU per event (measured on the worker under paced load), more than the whole
    pipeline's own compute, and that CPU was missing from everything else on the machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _session(card: ModelCard, want_cuda: bool) -> _Loaded:
    data = read_verified(card)
    try:
        session = ort.InferenceSession(
            data, sess_options=_session_options(), providers=_providers(want_cuda)
        )
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ModelError(f"{card.path}: onnxruntime cannot load it: {exc}") from exc
    _check_io(card, session)
    return _Loaded(card, session, session.get_providers()[0])


def _pick(cards: list[ModelCard], kind: str, models_dir: Path) -> ModelCard:
    found = [c for c in cards if c.input_kind == kind]
    if len(found) != 1:
        names = [c.name for c in found] or "none"
        raise ModelError(
            f"{models_dir}: need exactly one model with input_kind {kind!r}, found {names}"
        )
    return found[0]


class ModelSet:
    """The CNN and the SVM, loaded, verified and ready; thread-safe to call concurrently."""

    def __init__(
        self,
        cnn: _Loaded,
        svm: _Loaded,
        note: str,
        run_mode: RunMode = "plain",
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._cnn, self._svm = cnn, svm
        self._runs = [
            BatchRunner.for_card(m.session, m.card, run_mode, max_batch) for m in (cnn, svm)
        ]
        providers = dict.fromkeys([cnn.provider, svm.provider])
        #: The provider really in use (both models normally share it; else "A,B").
        self.provider: str = ",".join(providers)
        #: Why the provider is what it is (e.g. that CUDA was asked for and is not in use).
        self.provider_note: str = note
        self.feature_count: int = len(svm.card.feature_names or ())
        self.cards: tuple[ModelCard, ModelCard] = (cnn.card, svm.card)

    @classmethod
    def load(
        cls,
        models_dir: Path | None = None,
        require_gpu: bool = False,
        cpu_only: bool = False,
        *,
        run_mode: RunMode = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> ModelSet:
        """Load and verify the models in ``models_dir`` (default: the shipped ones), and warm up
        their bucket shapes (``run_mode``, ``max_batch``: :mod:`worker.inference.binding`).

        Fails with :class:`~worker.errors.ModelError` naming the file and the reason when a card
        or model is missing or malformed, a sha256 does not match, the SVM's feature names differ
        from :data:`worker.imaging.FEATURE_NAMES`, or ``require_gpu`` is set and CUDA is not the
        provider in use.
        """
        from worker.imaging import FEATURE_NAMES  # imaging is heavier; import only when loading

        cards = list_models(models_dir)
        where = models_dir or cards[0].path.parent.parent
        cnn_card, svm_card = _pick(cards, "image", where), _pick(cards, "features", where)
        if svm_card.feature_names != tuple(FEATURE_NAMES):
            raise ModelError(
                f"{svm_card.path}: trained on {len(svm_card.feature_names or ())} features that "
                f"differ from this worker's {len(FEATURE_NAMES)} (worker.imaging.FEATURE_NAMES); "
                "retrain with `scanstream train`"
            )
        if cnn_card.input_shape[1:] != (1, CNN_SIZE, CNN_SIZE):
            raise ModelError(f"{cnn_card.path}: image models must take (N, 1, 64, 64) input")
        if svm_card.labels != cnn_card.labels:
            raise ModelError(
                f"{svm_card.path}: labels {svm_card.labels} differ from the image "
                f"model's {cnn_card.labels}"
            )
        # Look for the CUDA libraries first: asking onnxruntime for CUDA without them makes it
        # log a red error before it falls back (worker/inference/cuda.py).
        unusable = "CPU asked for" if cpu_only else cuda_unusable_reason()
        want_cuda = unusable is None
        cnn = _session(cnn_card, want_cuda)
        # If CUDA just failed, do not ask again: onnxruntime would log the same error twice.
        svm = _session(svm_card, want_cuda and cnn.provider == CUDA)
        if unusable is not None:
            note = f"running on CPU: {unusable}"
            if not cpu_only:
                log.info("CUDA not used: %s", unusable)
        elif cnn.provider == CUDA and svm.provider == CUDA:
            note = "CUDA requested and in use"
        else:
            note = (
                "CUDA requested but onnxruntime fell back to "
                f"{cnn.provider} (see the onnxruntime log for why)"
            )
        models = cls(cnn, svm, note, run_mode, max_batch)
        if require_gpu and models.provider != CUDA:
            raise ModelError(
                f"require_gpu is set but the models run on {models.provider}: {note}. Install "
                "the NVIDIA driver and scanstream[cuda] (make setup CUDA=1), or unset "
                "SCANSTREAM_REQUIRE_GPU"
            )
        for run in models._runs:
            run.warm_up()
        return models

    def batching(self) -> dict[str, Any]:
        """``cuda_iobinding``, each model's run mode and the input shapes warmed up at load."""
        return describe(self._runs)

    def model_infos(self) -> list[dict[str, str]]:
        """``[{"name", "version", "execution_provider"}]`` for findings, logs and metrics."""
        return [
            {"name": m.card.name, "version": m.card.version, "execution_provider": m.provider}
            for m in (self._cnn, self._svm)
        ]

    def run_cnn(self, images: npt.NDArray[np.float32]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and logits (N,) for images (N, 64, 64)."""
        x = np.ascontiguousarray(images, dtype=np.float32)[:, None, :, :]
        prob, score = self._runs[0](x)
        return np.asarray(prob).reshape(len(x)), np.asarray(score).reshape(len(x))

    def run_svm(self, features: npt.NDArray[np.float32]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and decision values (N,) for feature vectors (N, F)."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        prob, score = self._runs[1](x)
        return np.asarray(prob).reshape(len(x)), np.asarray(score).reshape(len(x))

    def predict(
        self, cnn_inputs: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> tuple[list[Prediction], dict[str, float]]:
        """Predictions for N frames, and the time each model took (ms) for the whole batch."""
        if cnn_inputs.ndim != 3 or cnn_inputs.shape[1:] != (CNN_SIZE, CNN_SIZE):
            raise ValueError(f"cnn_inputs must be (N, 64, 64), got {cnn_inputs.shape}")
        if features.shape != (len(cnn_inputs), self.feature_count):
            raise ValueError(
                f"features must be ({len(cnn_inputs)}, {self.feature_count}), got {features.shape}"
            )
        if len(cnn_inputs) == 0:
            return [], {"cnn": 0.0, "svm": 0.0}
        t0 = time.perf_counter()
        cnn_p, cnn_s = self.run_cnn(cnn_inputs)
        t1 = time.perf_counter()
        svm_p, svm_s = self.run_svm(features)
        t2 = time.perf_counter()
        cnn, svm = self._cnn.card, self._svm.card
        preds = [
            Prediction(
                cnn_probability=float(cnn_p[i]),
                svm_probability=float(svm_p[i]),
                svm_decision=float(svm_s[i]),
                cnn_logit=float(cnn_s[i]),
                cnn_model=cnn.name,
                svm_model=svm.name,
                cnn_threshold=cnn.decision_threshold,
                svm_threshold=svm.decision_threshold,
                labels=cnn.labels,
            )
            for i in range(len(cnn_inputs))
        ]
        return preds, {"cnn": (t1 - t0) * 1e3, "svm": (t2 - t1) * 1e3}
