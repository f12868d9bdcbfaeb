"""Milliseconds per 512x512 16-bit CT slice for each imaging stage, on one core, against yardsticks.

The workload is what the worker sees after decoding: :func:`worker.phantoms.ct_slice` phantoms
with ``noise_hu`` of Gaussian noise (25 HU by default, against the phantoms' own 12: within the
range of clinical soft-tissue noise, and noise, not anatomy, decides how many pixels reach
Canny's low threshold, so how much our Canny has to do), stored as uint16
(HU + 1024, as a CT scanner with intercept -1024 writes them), converted to float32 HU
(``to_float``, the decoder's rescale) and run through :func:`worker.imaging.analyze_frame_stages`.
``total_ms_per_slice`` is the sum of our stage times.

In the same run, on the same stored slices, one thread, :mod:`worker.bench.baselines` times each
stage's floor (the bare library call for it) and the textbook recipe. Per slice the three run in
an order rotated slice by slice, so that neither the cache a predecessor warmed nor a burst of
load from elsewhere favours one of them. Reported: ``floor_<stage>_ms``, ``floor_total_ms``,
``ratio_to_floor_<stage>`` and ``ratio_to_floor`` (ours / floors), ``recipe_<step>_ms``,
``recipe_ms_per_slice`` and ``ratio_to_recipe`` (ours / recipe).

Decoding is timed beside them, on each distinct slice encoded as a Part 10 CT image
(:func:`worker.phantoms.encode_ct`, uncompressed): ``decode_bytes_ms`` is
:func:`worker.dicom.decode` (parse, the checks on the header, pixels, the rescale to float32 HU,
the integrity check), ``decode_floor_ms`` the bare steps to the same array
(``pydicom.dcmread``, ``np.frombuffer`` of the pixel bytes, the float32 rescale) and
``decode_ratio_to_floor`` their ratio. It stands apart from the total, which starts from the
stored pixels (its ``to_float`` is the decoder's rescale alone). All times are means over all
slices after one warm-up pass; targets (ours within 2x of the floors, at most the recipe) are
reported by :mod:`worker.bench.report`, never asserted.

>>> r = bench_imaging(n_slices=2, size=64)
>>> r["slices"], r["noise_hu"], sorted(k for k in r if k.endswith("_ms"))[:2]
(2.0, 25.0, ['canny_ms', 'decode_bytes_ms'])
>>> abs(r["total_ms_per_slice"] - sum(r[f"{s}_ms"] for s in ("to_float", *STAGES))) < 1e-6
True
>>> abs(r["ratio_to_floor"] - r["total_ms_per_slice"] / r["floor_total_ms"]) < 1e-9
True
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt
import pydicom

from worker.bench.baselines import RECIPE_STEPS, floor_ms, recipe_ms
from worker.dicom import decode
from worker.imaging import STAGES, ImagingConfig, analyze_frame_stages
from worker.phantoms import ct_slice, encode_ct

#: Distinct phantoms generated (then cycled): enough that the working set overflows the caches.
_DISTINCT: Final = 16
_INTERCEPT: Final = -1024.0


def _stored_slices(n: int, size: int, noise_hu: float) -> list[npt.NDArray[np.uint16]]:
    out = []
    for seed in range(min(n, _DISTINCT)):
        hu = ct_slice(seed, size, noise_hu=noise_hu)
        out.append(np.clip(np.rint(hu - _INTERCEPT), 0, 65535).astype(np.uint16))
    return out


def _to_float(stored: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    # The decoder's rescale: slope 1, intercept -1024, straight into float32.
    return np.add(stored, np.float32(_INTERCEPT), dtype=np.float32)


def _ours_ms(stored: npt.NDArray[np.uint16], cfg: ImagingConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    frame = _to_float(stored)
    out = {"to_float": (time.perf_counter() - t0) * 1e3}
    out.update(analyze_frame_stages(frame, "CT", cfg)[1])
    return out


def _ratio(ours: float, base: float) -> float:
    return ours / base if base > 0 else float("inf")


def bench_imaging(
    n_slices: int = 100,
    size: int = 512,
    config: ImagingConfig | None = None,
    noise_hu: float = 25.0,
) -> dict[str, float]:
    """Time ours, the floors and the recipe over ``n_slices`` CT-like slices on one core.

    Returns ``noise_hu``, ``slices`` and ``distinct_slices`` (phantoms generated, then cycled);
    ``to_float_ms`` and one ``<stage>_ms`` per :data:`worker.imaging.STAGES` (mean milliseconds
    per slice) and ``total_ms_per_slice`` (their sum); the same per stage with a ``floor_``
    prefix, ``floor_total_ms`` and the ratios ours / floor; ``recipe_<step>_ms`` per
    :data:`~worker.bench.baselines.RECIPE_STEPS`, ``recipe_ms_per_slice`` and
    ``ratio_to_recipe``. Sets OpenCV to one thread for the rest of the process, so that the
    figures are per core.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    cfg = config or ImagingConfig()
    cv2.setNumThreads(1)
    stored = _stored_slices(n_slices, size, noise_hu)
    runs: tuple[Callable[[npt.NDArray[np.uint16]], dict[str, float]], ...] = (
        lambda s: _ours_ms(s, cfg),
        lambda s: floor_ms(s, _INTERCEPT, cfg),
        lambda s: recipe_ms(s, _INTERCEPT),
    )
    for s in stored:  # warm-up: first-call allocations and lazy initialisation
        for run in runs:
            run(s)
    totals: list[dict[str, float]] = [{} for _ in runs]
    for i in range(n_slices):
        for k in range(len(runs)):
            j = (i + k) % len(runs)  # rotate who goes first, slice by slice
            for name, ms in runs[j](stored[i % len(stored)]).items():
                totals[j][name] = totals[j].get(name, 0.0) + ms
    ours, floor, recipe = ({n: ms / n_slices for n, ms in t.items()} for t in totals)
    result = {
        "noise_hu": float(noise_hu),
        "slices": float(n_slices),
        "distinct_slices": float(len(stored)),
    }
    result.update({f"{n}_ms": ours[n] for n in ("to_float", *STAGES)})
    result["total_ms_per_slice"] = total = sum(ours.values())
    result.update({f"floor_{n}_ms": floor[n] for n in ("to_float", *STAGES)})
    result["floor_total_ms"] = floor_total = sum(floor.values())
    result.update({f"ratio_to_floor_{n}": _ratio(ours[n], floor[n]) for n in ("to_float", *STAGES)})
    result["ratio_to_floor"] = _ratio(total, floor_total)
    result.update({f"recipe_{n}_ms": recipe[n] for n in RECIPE_STEPS})
    result["recipe_ms_per_slice"] = recipe_total = sum(recipe.values())
    result["ratio_to_recipe"] = _ratio(total, recipe_total)
    ours_decode, floor_decode = _decode_ms(n_slices, stored)
    result["decode_bytes_ms"] = ours_decode
    result["decode_floor_ms"] = floor_decode
    result["decode_ratio_to_floor"] = _ratio(ours_decode, floor_decode)
    return result


def _decode_ms(n: int, stored: list[npt.NDArray[np.uint16]]) -> tuple[float, float]:
    """Mean ms per slice of :func:`worker.dicom.decode` and of its floor, alternating first."""
    encoded = [
        encode_ct(s.astype(np.float32) + np.float32(_INTERCEPT), instance=i + 1)
        for i, s in enumerate(stored)
    ]
    runs = (lambda data: decode(data), _bare_decode)
    for data in encoded:  # warm-up
        for run in runs:
            run(data)
    totals = [0.0, 0.0]
    for i in range(n):
        data = encoded[i % len(encoded)]
        for k in (i % 2, 1 - i % 2):
            t0 = time.perf_counter()
            runs[k](data)
            totals[k] += time.perf_counter() - t0
    return totals[0] / n * 1e3, totals[1] / n * 1e3


def _bare_decode(data: bytes) -> npt.NDArray[np.float32]:
    """The floor of decoding an uncompressed 16-bit slice: parse, view the pixels, rescale."""
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(int(ds.Rows), int(ds.Columns))
    return np.add(stored, np.float32(float(ds.RescaleIntercept)), dtype=np.float32)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m worker.bench.imaging
    import json

    print(json.dumps({k: round(v, 4) for k, v in bench_imaging().items()}))
