"""The shipped models mean the same at every phantom size trained on (128, 256, 512 pixels).

The held-out split is regenerated (300 phantoms per size, ~10 s) and run through the shipped
ONNX files: each model's AUC may differ by at most 0.02 between sizes, and the per-size figures
must be those in the cards.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from worker.inference import ModelCard, list_models
from worker.training.data import PHANTOM_SIZES, Split, make_split
from worker.training.metrics import roc_auc

MAX_AUC_SPREAD = 0.02


@pytest.fixture(scope="module")
def held_out() -> Split:
    return make_split("test", seed=0)


def _probabilities(card: ModelCard, split: Split) -> np.ndarray:
    session = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
    x = split.images[:, None] if card.input_kind == "image" else split.features
    [prob] = session.run([card.outputs["probability"]], {card.input_name: x})
    return np.asarray(prob)


@pytest.mark.parametrize("kind", ["features", "image"])
def test_auc_is_the_same_at_every_size(held_out: Split, kind: str) -> None:
    [card] = [c for c in list_models() if c.input_kind == kind]
    prob = _probabilities(card, held_out)
    aucs = {}
    for size in PHANTOM_SIZES:
        m = held_out.sizes == size
        assert m.sum() == 300 and held_out.labels[m].sum() == 150
        aucs[size] = roc_auc(prob[m], held_out.labels[m])
    print(card.name, "held-out AUC by size:", {s: round(a, 4) for s, a in aucs.items()})
    tolerance = card.evaluation["reproducibility"]["tolerance_abs"]
    for size, auc in aucs.items():
        assert abs(auc - card.evaluation["held_out_by_size"][str(size)]["auc"]) <= tolerance
    # The acceptance bound of the size-robust SVM; the CNN (0.004 at release) holds it too.
    assert max(aucs.values()) - min(aucs.values()) <= MAX_AUC_SPREAD, aucs
