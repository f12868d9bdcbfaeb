"""Milliseconds per 512x512 16-bit CT slice for each imaging stage, on one core.

The workload is what the worker sees after decoding: :func:`worker.phantoms.ct_slice` phantoms
stored as uint16 (HU + 1024, as a CT scanner with intercept -1024 writes them), converted to
float32 HU (``to_float``, the decoder's rescale) and run through
:func:`worker.imaging.analyze_frame_stages`. Stage times are means over all slices after one
warm-up pass; ``total_ms_per_slice`` is their sum.

>>> r = bench_imaging(n_slices=2, size=64)
>>> r["slices"], sorted(k for k in r if k.endswith("_ms"))[:2]
(2.0, ['canny_ms', 'features_ms'])
>>> abs(r["total_ms_per_slice"] - sum(v for k, v in r.items() if k.endswith("_ms"))) < 1e-6
True
"""

from __future__ import annotations

import time
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging import STAGES, ImagingConfig, analyze_frame_stages
from worker.phantoms import ct_slice

#: Distinct phantoms generated (then cycled): enough that the working set overflows the caches.
_DISTINCT: Final = 16
_INTERCEPT: Final = -1024.0


def _stored_slices(n: int, size: int) -> list[npt.NDArray[np.uint16]]:
    out = []
    for seed in range(min(n, _DISTINCT)):
        hu = ct_slice(seed, size)
        out.append(np.clip(np.rint(hu - _INTERCEPT), 0, 65535).astype(np.uint16))
    return out


def _to_float(stored: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    # The decoder's rescale: slope 1, intercept -1024, straight into float32.
    return np.add(stored, np.float32(_INTERCEPT), dtype=np.float32)


def bench_imaging(
    n_slices: int = 100, size: int = 512, config: ImagingConfig | None = None
) -> dict[str, float]:
    """Time each stage over ``n_slices`` CT-like ``size`` x ``size`` slices on one core.

    Returns ``to_float_ms`` and one ``<stage>_ms`` per :data:`worker.imaging.STAGES` (mean
    milliseconds per slice), ``total_ms_per_slice`` (their sum) and ``slices``. Sets OpenCV to
    one thread for the rest of the process, so that the figure is per core.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    cfg = config or ImagingConfig()
    cv2.setNumThreads(1)
    stored = _stored_slices(n_slices, size)
    for s in stored:  # warm-up: first-call allocations and lazy initialisation
        analyze_frame_stages(_to_float(s), "CT", cfg)
    totals = dict.fromkeys(("to_float", *STAGES), 0.0)
    for i in range(n_slices):
        t0 = time.perf_counter()
        frame = _to_float(stored[i % len(stored)])
        totals["to_float"] += (time.perf_counter() - t0) * 1e3
        _, fine = analyze_frame_stages(frame, "CT", cfg)
        for name, ms in fine.items():
            totals[name] += ms
    result = {f"{name}_ms": ms / n_slices for name, ms in totals.items()}
    result["total_ms_per_slice"] = sum(result.values())
    result["slices"] = float(n_slices)
    return result


if __name__ == "__main__":  # pragma: no cover - manual use: python -m worker.bench.imaging
    import json

    print(json.dumps({k: round(v, 4) for k, v in bench_imaging().items()}))
