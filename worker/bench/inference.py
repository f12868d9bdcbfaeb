"""Images per second of the CNN and the SVM at batch sizes 1, 8 and 32, and of batched inference.

The workload is real: :func:`worker.phantoms.ct_slice` phantoms (half with a lesion) analysed by
:func:`worker.imaging.analyze_frame`, giving the CNN's 64x64 inputs and the SVM's feature
vectors. Each case runs once to warm up (onnxruntime allocates lazily), then repeatedly for at
least ``min_seconds``; the rate is frames / elapsed wall time of the model call alone. The
provider reported is the one the sessions really use (``ModelSet.provider``).

``domain_check_us_per_frame`` is the cost of checking one frame against every model's declared
input domain (:mod:`worker.inference.domain`), ``saliency_ms_per_frame`` that of the CNN's
occlusion saliency per positive frame, 8 frames explained together
(:mod:`worker.inference.saliency`).

``batched_*`` runs both models over ``4 * max_batch`` frames in chunks of ``max_batch`` (the
worker's default, 16), as :class:`worker.pipeline.Pipeline` does for a poll: the rate a busy
worker gets.

On CUDA the models run as the worker runs them (:mod:`worker.inference.binding`): batches padded
to bucket shapes (powers of two up to ``max_batch``; a batch of 32 is two of 16), every bucket
warmed up at load, and IOBinding with preallocated buffers; ``cuda_iobinding``, ``run_modes``
and ``warmup_shapes`` say so, per block. The ``"cpu"`` block beside it, and the only block on a
machine without CUDA, is the plain CPU path (no padding, no warm-up shapes).

>>> r = bench_inference(batch_sizes=(1, 2), min_seconds=0.01)
>>> sorted(k for k in r if k.startswith("cnn_img_s"))
['cnn_img_s_b1', 'cnn_img_s_b2']
>>> r["cuda_iobinding"] == (r["provider"] == "CUDAExecutionProvider")
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from worker.imaging import analyze_frame
from worker.inference import ModelSet, cnn_input
from worker.inference.domain import domains_of, frame_checks
from worker.inference.saliency import explain_frames
from worker.phantoms import ct_slice, random_lesion


def _workload(n: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images, features = [], []
    for i in range(n):
        lesion = random_lesion(rng, size) if i % 2 else None
        analysis = analyze_frame(ct_slice(i, size, lesion=lesion), "CT")
        images.append(cnn_input(analysis.windowed))
        features.append(analysis.features)
    return np.stack(images), np.stack(features).astype(np.float32)


def _rate(run: Callable[[], object], frames: int, min_seconds: float) -> float:
    run()  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls * frames / elapsed


def _evidence_costs(
    models: ModelSet, images: np.ndarray, features: np.ndarray, min_seconds: float
) -> dict[str, float]:
    """Microseconds per frame of the input-domain check (every model's, as the pipeline does)
    and milliseconds per frame of the CNN's occlusion saliency (8 frames explained together)."""
    meta = SimpleNamespace(modality="CT", rows=256, columns=256, pixel_spacing_mm=(0.7, 0.7))
    domains = domains_of(models)
    vectors = list(features)
    check = partial(frame_checks, meta, vectors, domains)
    frames = images[:8]
    _, logits = models.run_cnn(frames)
    explain = partial(explain_frames, frames, models.run_cnn, baseline=logits)
    return {
        "domain_check_us_per_frame": round(1e6 / _rate(check, len(vectors), min_seconds), 2),
        "domain_models": len(domains),
        "saliency_ms_per_frame": round(1e3 / _rate(explain, len(frames), min_seconds), 2),
    }


def bench_inference(
    models_dir: Path | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    min_seconds: float = 1.0,
    max_batch: int = 16,
) -> dict[str, Any]:
    """Frames per second per model and batch size, the batched rate, the provider; where the
    models run on CUDA, the same on the CPU under ``"cpu"``, side by side."""
    models = ModelSet.load(models_dir, max_batch=max_batch)
    images, features = _workload(max(batch_sizes))
    out = _bench_models(models, images, features, batch_sizes, min_seconds, max_batch)
    if models.provider != "CPUExecutionProvider":
        cpu = ModelSet.load(models_dir, cpu_only=True)
        out["cpu"] = _bench_models(cpu, images, features, batch_sizes, min_seconds, max_batch)
    return out


def _bench_models(
    models: ModelSet,
    images: np.ndarray,
    features: np.ndarray,
    batch_sizes: Sequence[int],
    min_seconds: float,
    max_batch: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": models.provider, "provider_note": models.provider_note}
    out.update(models.batching())
    for b in batch_sizes:
        cnn = partial(models.run_cnn, images[:b])
        svm = partial(models.run_svm, features[:b])
        out[f"cnn_img_s_b{b}"] = round(_rate(cnn, b, min_seconds), 1)
        out[f"svm_img_s_b{b}"] = round(_rate(svm, b, min_seconds), 1)
    n = 4 * max_batch
    big_images = np.concatenate([images] * (n // len(images) + 1))[:n]
    big_features = np.concatenate([features] * (n // len(features) + 1))[:n]

    def batched() -> None:
        for start in range(0, n, max_batch):
            models.predict(
                big_images[start : start + max_batch], big_features[start : start + max_batch]
            )

    out["batched_img_s"] = round(_rate(batched, n, min_seconds), 1)
    out["batched_max_batch"] = max_batch
    out.update(_evidence_costs(models, images, features, min_seconds))
    out["models"] = ", ".join(f"{i['name']} {i['version']}" for i in models.model_infos())
    return out
