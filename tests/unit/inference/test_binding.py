"""Bucketed batches and IOBinding (worker/inference/binding.py), checked on the CPU provider:
the CUDA path is the same code with another device, and no GPU is needed to check that padding
and binding change no output."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from worker.errors import ModelError
from worker.inference import ModelSet, list_models
from worker.inference.binding import BatchRunner, bucket_plan, bucket_sizes
from worker.inference.saliency import explain_frames

Inputs = tuple[np.ndarray, np.ndarray, np.ndarray]
SIZES = [1, 3, 16, 21]  # 21 > max_batch: a whole chunk of 16, then 5 padded to 8


@pytest.fixture(scope="module")
def by_mode() -> dict[str, ModelSet]:
    return {mode: ModelSet.load(cpu_only=True, run_mode=mode) for mode in ("bucketed", "bound")}


@pytest.mark.parametrize("max_batch", [1, 2, 5, 12, 16, 32])
def test_bucket_plan_covers_every_row_with_the_smallest_bucket(max_batch: int) -> None:
    buckets = bucket_sizes(max_batch)
    assert buckets[-1] == max_batch and list(buckets) == sorted(set(buckets))
    assert all(b & (b - 1) == 0 for b in buckets[:-1])  # powers of two below the maximum
    for n in range(3 * max_batch + 2):
        plan = bucket_plan(n, buckets)
        assert [a for a, _, _ in plan] == [0, *(b for _, b, _ in plan[:-1])][: len(plan)]
        assert (plan[-1][1] if plan else 0) == n
        for start, stop, bucket in plan:
            assert bucket in buckets
            assert bucket == min(b for b in buckets if b >= stop - start)
        assert all(stop - start == max_batch for start, stop, _ in plan[:-1])


def test_bucket_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        bucket_sizes(0)
    for n, buckets in ((-1, (1, 2)), (3, ()), (3, (2, 1)), (3, (0, 1)), (3, (1, 1, 2))):
        with pytest.raises(ValueError):
            bucket_plan(n, buckets)


def test_cpu_default_is_plain_and_unwarmed(models: ModelSet) -> None:
    assert models.provider != "CUDAExecutionProvider" or models.batching()["cuda_iobinding"]
    if models.provider == "CPUExecutionProvider":
        assert models.batching() == {
            "cuda_iobinding": False,
            "run_modes": {"lesion-cnn": "plain", "lesion-svm": "plain"},
            "warmup_shapes": {"lesion-cnn": [], "lesion-svm": []},
        }


def test_modes_warm_up_every_bucket_shape(by_mode: dict[str, ModelSet]) -> None:
    for models in by_mode.values():
        info = models.batching()
        assert info["cuda_iobinding"] is False  # bound, but on the CPU
        assert info["warmup_shapes"]["lesion-cnn"] == [[b, 1, 64, 64] for b in (1, 2, 4, 8, 16)]
        assert info["warmup_shapes"]["lesion-svm"] == [
            [b, models.feature_count] for b in (1, 2, 4, 8, 16)
        ]
    odd = ModelSet.load(cpu_only=True, run_mode="bound", max_batch=12).batching()
    assert [s[0] for s in odd["warmup_shapes"]["lesion-cnn"]] == [1, 2, 4, 8, 12]


@pytest.mark.parametrize("n", SIZES)
def test_bucketing_and_iobinding_change_no_output(
    models: ModelSet, by_mode: dict[str, ModelSet], phantom_inputs: Inputs, n: int
) -> None:
    images, features, _ = phantom_inputs
    images, features = images[:n], features[:n]
    plain = ModelSet.load(cpu_only=True) if models.provider != "CPUExecutionProvider" else models
    cnn_card = plain.cards[0]
    # The reference: session.run on the batch as given, as the CPU path always did.
    session = ort.InferenceSession(str(cnn_card.path), providers=["CPUExecutionProvider"])
    ref_p, ref_s = session.run(
        [cnn_card.outputs["probability"], cnn_card.outputs["score"]],
        {cnn_card.input_name: images[:, None]},
    )
    expected_cnn, expected_svm = plain.run_cnn(images), plain.run_svm(features)
    np.testing.assert_array_equal(expected_cnn[0], ref_p)
    np.testing.assert_array_equal(expected_cnn[1], ref_s)
    for mode, fast in by_mode.items():
        for got, want in zip(
            (*fast.run_cnn(images), *fast.run_svm(features)),
            (*expected_cnn, *expected_svm),
            strict=True,
        ):
            assert got.shape == (n,), mode
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(fast.run_cnn(images)[0], ref_p, rtol=1e-5, atol=1e-6)
        preds, _ = fast.predict(images, features)
        assert [p.cnn_probability >= p.cnn_threshold for p in preds] == list(ref_p >= 0.5)


def test_bound_outputs_are_not_the_reused_buffers(
    by_mode: dict[str, ModelSet], phantom_inputs: Inputs
) -> None:
    images, features, labels = phantom_inputs
    bound = by_mode["bound"]
    lesion, normal = images[labels == 1][:3], images[labels == 0][:3]
    first = bound.run_cnn(lesion)
    kept = [a.copy() for a in first]
    bound.run_cnn(normal)  # same bucket (4): its buffers are written again
    for a, b in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    assert bound.run_cnn(np.zeros((0, 64, 64), np.float32))[0].shape == (0,)
    assert bound.predict(images[:0], features[:0])[0] == []


def test_bound_is_safe_from_several_threads(
    by_mode: dict[str, ModelSet], phantom_inputs: Inputs
) -> None:
    images, _, _ = phantom_inputs
    bound = by_mode["bound"]
    jobs = [images[i : i + n] for i in range(8) for n in (1, 3, 5, 16)]
    expected = [bound.run_cnn(x)[1] for x in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: bound.run_cnn(x)[1], jobs))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_saliency_through_buckets_is_unchanged(
    models: ModelSet, by_mode: dict[str, ModelSet], phantom_inputs: Inputs
) -> None:
    images, _, labels = phantom_inputs
    frames = images[labels == 1][:2]
    plain = ModelSet.load(cpu_only=True) if models.provider != "CPUExecutionProvider" else models
    want = explain_frames(frames, plain.run_cnn, frame_shapes=(512, 512))
    got = explain_frames(frames, by_mode["bound"].run_cnn, frame_shapes=(512, 512))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.drops, b.drops, rtol=1e-4, atol=1e-5)
        assert a.bbox == b.bbox


def test_runner_arguments_and_warm_up_failures() -> None:
    card = next(c for c in list_models() if c.input_kind == "features")
    session = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="mode"):
        BatchRunner(session, card.input_name, ["probability"], (28,), mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fixed sample shape"):
        BatchRunner(session, card.input_name, ["probability"], (None,), mode="bound")
    auto = BatchRunner(session, card.input_name, ["probability"], (None,), mode="auto")
    assert auto.mode == "plain" and auto.warm_up() == ()
    wrong = BatchRunner(session, card.input_name, ["probability"], (5,), "bucketed", 2, "svm")
    with pytest.raises(ModelError, match=r"svm: warm-up of shape \(1, 5\)"):
        wrong.warm_up()
