"""Every shipped ONNX file loads in a fresh onnxruntime session within the GPU build's limits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from worker.inference import ModelCard, list_models

CARDS = list_models()


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_ir_opset_size_and_operators(card: ModelCard) -> None:
    model = onnx.load(str(card.path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10  # onnxruntime-gpu rejects the IR a fresh onnx writes
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets == {"": opsets[""]} and opsets[""] <= 17
    # Default-domain operators only: no ai.onnx.ml SVMClassifier, which has no CUDA kernel.
    assert {n.domain for n in model.graph.node} <= {""}
    assert card.path.stat().st_size < 5 * 1024 * 1024


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_fresh_session_matches_card(card: ModelCard) -> None:
    session = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == card.input_name and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str)  # symbolic: the batch dimension is dynamic
    assert [d if isinstance(d, int) else None for d in inp.shape] == list(card.input_shape)
    assert set(card.outputs.values()) <= {o.name for o in session.get_outputs()}
    for n in (1, 3):
        x = np.full((n, *card.input_shape[1:]), 0.5, np.float32)
        prob, score = session.run(
            [card.outputs["probability"], card.outputs["score"]], {card.input_name: x}
        )
        assert prob.shape == (n,) and score.shape == (n,)
        assert np.all((prob >= 0) & (prob <= 1))
