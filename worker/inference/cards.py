"""Model cards: what each shipped ONNX model is, how to feed it, how well it did, and its hash.

A model lives in its own directory, ``<models_dir>/<name>/``, as ``model.onnx`` next to
``card.json``. The card's ``sha256`` pins the exact bytes of ``model.onnx``: :func:`verify_models`
recomputes it, and :class:`~worker.inference.models.ModelSet` refuses to start on a mismatch.

Two parts of a card are optional, so that a bring-your-own model's card needs neither:
``input_domain`` (what the model was trained on, in the format of
:mod:`worker.inference.domain`; parsed when the card loads, so a malformed one fails there) and
``calibration`` (how the ``probability`` output was calibrated, and its calibration error before
and after). ``scanstream train`` writes both for the shipped models, with a reliability diagram
(``reliability.png``) next to each card.

>>> cards = list_models()
>>> sorted(c.name for c in cards)
['lesion-cnn', 'lesion-svm']
>>> all(ok for _, ok, _ in verify_models())
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from worker.errors import ModelError
from worker.inference.domain import InputDomain

CARD_FILE: Final = "card.json"
MODEL_FILE: Final = "model.onnx"
CARD_SCHEMA_VERSION: Final = 1
INPUT_KINDS: Final = ("image", "features")
DEMO_NOTICE: Final = (
    "Demonstration model trained only on synthetic phantoms (worker.phantoms). It is NOT "
    "clinically validated and must not be used for diagnosis or any clinical decision."
)


def default_models_dir() -> Path:
    """The models shipped inside the package (``worker/models``)."""
    return Path(__file__).resolve().parent.parent / "models"


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``.

    >>> sha256_bytes(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The card of one model; ``path`` is where its ``model.onnx`` lies (not stored in JSON)."""

    name: str
    version: str
    task: str
    input_kind: str  # "image": (N, 1, 64, 64) windowed slice; "features": (N, F) feature vector
    input_name: str
    input_shape: tuple[int | None, ...]  # None marks the dynamic batch dimension
    input_dtype: str
    outputs: dict[str, str]  # {"probability": output name, "score": output name}
    preprocessing: str
    labels: tuple[str, str]  # (negative, positive); the probability is that of the positive
    decision_threshold: float
    sha256: str
    training: dict[str, Any]
    evaluation: dict[str, Any]
    feature_names: tuple[str, ...] | None = None
    intended_use: str = DEMO_NOTICE
    #: What the model was trained on (:mod:`worker.inference.domain`); None: undeclared.
    input_domain: dict[str, Any] | None = None
    #: How ``probability`` was calibrated and how well (ECE before/after); None: not stated.
    calibration: dict[str, Any] | None = None
    schema_version: int = CARD_SCHEMA_VERSION
    path: Path = field(default=Path(MODEL_FILE), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``path`` left out: a card describes the file next to it)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "intended_use": self.intended_use,
            "input_kind": self.input_kind,
            "input_name": self.input_name,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "outputs": dict(self.outputs),
            "preprocessing": self.preprocessing,
            "labels": list(self.labels),
            "decision_threshold": self.decision_threshold,
            "sha256": self.sha256,
            "training": self.training,
            "evaluation": self.evaluation,
        }
        # Optional parts are written only when present, so that a card without them (a
        # bring-your-own model) round-trips unchanged.
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.input_domain is not None:
            out["input_domain"] = self.input_domain
        return out

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> ModelCard:
        """Validate a parsed card; ``path`` is the model file it describes (for messages)."""
        where = path.parent / CARD_FILE
        if not isinstance(data, dict):
            raise ModelError(f"{where}: a card must be a JSON object")
        required = (
            "name",
            "version",
            "task",
            "input_kind",
            "input_name",
            "input_shape",
            "input_dtype",
            "outputs",
            "preprocessing",
            "labels",
            "decision_threshold",
            "sha256",
            "training",
            "evaluation",
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelError(f"{where}: card lacks field(s) {', '.join(missing)}")
        try:
            card = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=str(data["task"]),
                input_kind=str(data["input_kind"]),
                input_name=str(data["input_name"]),
                input_shape=tuple(None if d is None else int(d) for d in data["input_shape"]),
                input_dtype=str(data["input_dtype"]),
                outputs={str(k): str(v) for k, v in dict(data["outputs"]).items()},
                preprocessing=str(data["preprocessing"]),
                labels=(str(data["labels"][0]), str(data["labels"][1])),
                decision_threshold=float(data["decision_threshold"]),
                sha256=str(data["sha256"]).lower(),
                training=dict(data["training"]),
                evaluation=dict(data["evaluation"]),
                feature_names=None
                if data.get("feature_names") is None
                else tuple(str(n) for n in data["feature_names"]),
                intended_use=str(data.get("intended_use", DEMO_NOTICE)),
                input_domain=_optional_object(data, "input_domain", where),
                calibration=_optional_object(data, "calibration", where),
                schema_version=int(data.get("schema_version", CARD_SCHEMA_VERSION)),
                path=path,
            )
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ModelError(f"{where}: malformed card field: {exc}") from exc
        problems = card._problems()
        if problems:
            raise ModelError(f"{where}: {'; '.join(problems)}")
        if card.input_domain is not None:
            try:  # the runtime parses it for every frame: a malformed one fails here, at load
                InputDomain.from_card(card.input_domain)
            except ModelError as exc:
                raise ModelError(f"{where}: {exc}") from exc
            except (AttributeError, TypeError, ValueError, KeyError) as exc:
                raise ModelError(f"{where}: input_domain is malformed: {exc!r}") from exc
        return card

    def _problems(self) -> list[str]:
        out = []
        if self.schema_version != CARD_SCHEMA_VERSION:
            out.append(f"schema_version {self.schema_version} is not {CARD_SCHEMA_VERSION}")
        if self.input_dtype != "float32":  # the worker feeds float32 to every model
            out.append(f"input_dtype must be 'float32', not {self.input_dtype!r}")
        if self.input_kind not in INPUT_KINDS:
            out.append(f"input_kind must be one of {INPUT_KINDS}, not {self.input_kind!r}")
        if set(self.outputs) != {"probability", "score"}:
            out.append("outputs must map exactly 'probability' and 'score' to output names")
        if not 0.0 <= self.decision_threshold <= 1.0:
            out.append("decision_threshold must lie in [0, 1]")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            out.append("sha256 must be 64 hex digits")
        if self.input_kind == "features" and not self.feature_names:
            out.append("a 'features' model must list its feature_names")
        return out


def _optional_object(data: dict[str, Any], key: str, where: Path) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ModelError(f"{where}: {key} must be a JSON object")
    return value


def card_for_dir(model_dir: Path) -> ModelCard:
    """Read and validate ``model_dir/card.json`` (the model file need not be valid yet)."""
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"{card_path}: missing model card (every model.onnx needs a card.json)")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card_path}: unreadable card: {exc}") from exc
    return ModelCard.from_dict(data, model_dir / MODEL_FILE)


def write_card(card: ModelCard, model_dir: Path) -> Path:
    """Write ``card.json`` into ``model_dir`` (stable key order and formatting, for diffs)."""
    path = model_dir / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def _model_dirs(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        raise ModelError(f"{models_dir}: models directory does not exist")
    dirs = sorted(
        p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    if not dirs:
        raise ModelError(f"{models_dir}: no model directories (expected <name>/model.onnx)")
    return dirs


def list_models(models_dir: Path | None = None) -> list[ModelCard]:
    """The cards of every model under ``models_dir`` (default: the shipped models), by name.

    Raises :class:`~worker.errors.ModelError` on a missing or malformed card.
    """
    return [card_for_dir(d) for d in _model_dirs(models_dir or default_models_dir())]


def read_verified(card: ModelCard) -> bytes:
    """The bytes of ``card.path`` after checking them against the card's sha256.

    The caller hands these very bytes to onnxruntime, so the file cannot change between the
    check and the load.
    """
    try:
        data = card.path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{card.path}: model file is missing") from exc
    except OSError as exc:
        raise ModelError(f"{card.path}: model file is unreadable: {exc}") from exc
    actual = sha256_bytes(data)
    if actual != card.sha256:
        raise ModelError(
            f"{card.path}: sha256 mismatch (card says {card.sha256[:12]}..., file is "
            f"{actual[:12]}...): the file changed after its card was written; restore it or "
            "retrain with `scanstream train`"
        )
    return data


def verify_models(models_dir: Path | None = None) -> list[tuple[str, bool, str]]:
    """Check every model's card and sha256; one ``(path, ok, message)`` per model or problem.

    Never raises for a bad model: a missing directory, card or file is reported as not ok with
    the path it concerns.
    """
    root = models_dir or default_models_dir()
    try:
        dirs = _model_dirs(root)
    except ModelError as exc:
        return [(str(root), False, str(exc))]
    results: list[tuple[str, bool, str]] = []
    for d in dirs:
        try:
            card = card_for_dir(d)
            read_verified(card)
        except ModelError as exc:
            # Every ModelError raised above starts with the path of the file at fault.
            bad = d / CARD_FILE if str(exc).startswith(str(d / CARD_FILE)) else d / MODEL_FILE
            results.append((str(bad), False, str(exc)))
            continue
        results.append((str(card.path), True, f"{card.name} {card.version}: sha256 ok"))
    return results
