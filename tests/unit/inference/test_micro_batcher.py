"""MicroBatcher: same results as unbatched inference, size and delay limits, draining, errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from worker.inference import MicroBatcher, ModelSet, Prediction

Inputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def test_results_do_not_depend_on_batching(models: ModelSet, phantom_inputs: Inputs) -> None:
    images, features, _ = phantom_inputs
    reference = [
        models.predict(images[i : i + 1], features[i : i + 1])[0][0] for i in range(len(images))
    ]
    sizes: list[int] = []
    with MicroBatcher(
        models, max_batch_size=8, max_delay_ms=50.0, on_batch=lambda n, _t: sizes.append(n)
    ) as batcher:
        futures = [batcher.submit(images[i], features[i]) for i in range(len(images))]
        results = [f.result(timeout=30) for f in futures]
    assert sum(sizes) == len(images) and max(sizes) <= 8
    assert max(sizes) > 1  # 40 frames submitted at once must share batches
    for (pred, timings), ref in zip(results, reference, strict=True):
        assert abs(pred.cnn_probability - ref.cnn_probability) <= 1e-5
        assert abs(pred.svm_decision - ref.svm_decision) <= 1e-5
        assert {"cnn", "svm", "queue", "batch_size"} <= set(timings)


def test_concurrent_submitters(models: ModelSet, phantom_inputs: Inputs) -> None:
    images, features, _ = phantom_inputs
    out: dict[int, Future[tuple[Prediction, dict[str, float]]]] = {}
    with MicroBatcher(models, max_batch_size=16, max_delay_ms=5.0) as batcher:

        def worker(offset: int) -> None:
            for i in range(offset, len(images), 4):
                out[i] = batcher.submit(images[i], features[i])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # close() drained: every future is done without waiting further.
    assert sorted(out) == list(range(len(images))) and all(f.done() for f in out.values())
    expected, _ = models.predict(images, features)
    for i, future in out.items():
        assert abs(future.result()[0].cnn_probability - expected[i].cnn_probability) <= 1e-5


def test_lone_frame_waits_about_max_delay(models: ModelSet, phantom_inputs: Inputs) -> None:
    images, features, _ = phantom_inputs
    with MicroBatcher(models, max_batch_size=64, max_delay_ms=30.0) as batcher:
        batcher.submit(images[0], features[0]).result(timeout=30)  # warm-up
        start = time.perf_counter()
        _, timings = batcher.submit(images[0], features[0]).result(timeout=30)
        elapsed = time.perf_counter() - start
    assert timings["batch_size"] == 1.0
    assert 0.025 <= elapsed < 5.0  # flushed by the delay, not held until a full batch
    assert timings["queue"] >= 25.0


def test_full_batch_does_not_wait_for_the_delay(models: ModelSet, phantom_inputs: Inputs) -> None:
    images, features, _ = phantom_inputs
    with MicroBatcher(models, max_batch_size=4, max_delay_ms=60_000.0) as batcher:
        start = time.perf_counter()
        futures = [batcher.submit(images[i], features[i]) for i in range(4)]
        for f in futures:
            assert f.result(timeout=30)[1]["batch_size"] == 4.0
        assert time.perf_counter() - start < 30.0


def test_close_drains_and_then_refuses(models: ModelSet, phantom_inputs: Inputs) -> None:
    images, features, _ = phantom_inputs
    batcher = MicroBatcher(models, max_batch_size=64, max_delay_ms=60_000.0)
    futures = [batcher.submit(images[i], features[i]) for i in range(5)]
    batcher.close()  # must not wait the minute: closing flushes what is queued
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(images[0], features[0])


def test_bad_shapes_are_refused_at_submit(models: ModelSet) -> None:
    with MicroBatcher(models, max_batch_size=2, max_delay_ms=1.0) as batcher:
        with pytest.raises(ValueError, match="64, 64"):
            batcher.submit(
                np.zeros((32, 32), np.float32), np.zeros(models.feature_count, np.float32)
            )
        with pytest.raises(ValueError, match="features"):
            batcher.submit(np.zeros((64, 64), np.float32), np.zeros(3, np.float32))


class _Failing:
    feature_count = 3

    def predict(self, images: np.ndarray, features: np.ndarray) -> None:
        raise RuntimeError("device lost")


def test_inference_failure_reaches_every_waiter() -> None:
    with MicroBatcher(_Failing(), max_batch_size=2, max_delay_ms=1.0) as batcher:  # type: ignore[arg-type]
        futures = [
            batcher.submit(np.zeros((64, 64), np.float32), np.zeros(3, np.float32))
            for _ in range(3)
        ]
        for f in futures:
            with pytest.raises(RuntimeError, match="device lost"):
                f.result(timeout=30)


def test_invalid_limits(models: ModelSet) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(models, max_batch_size=0, max_delay_ms=1.0)
