"""Occlusion sensitivity: where the CNN looked, as evidence for a positive frame (issue #15).

A patch of the CNN's 64x64 input is hidden and the image is scored again; the *drop* of the
logit (baseline minus occluded, in logit units) says how much the model relied on what the
patch covered. Patches slide on a grid of ``stride`` pixels, centred on the cells of that grid;
with ``patch > stride`` they overlap, and a pixel's drop is the mean over the patches covering
it, a cell's the mean over its pixels (with ``patch == stride`` a cell's drop is simply its own
patch's). The result is one ``(64/stride, 64/stride)`` map per frame. Overlap smooths the map
and spreads it: a region that matters lights up to half a patch around it (see the example).

Everything here is pure over arrays: the model is one callable ``run(images (N, 64, 64)) ->
(probabilities (N,), scores (N,))``, such as :meth:`worker.inference.ModelSet.run_cnn`. The
occluded copies of *all* the given frames are streamed through it together, in chunks of at most
``batch_max`` images, so a poll's positive frames cost ``ceil(F * cells / batch_max)`` calls
(plus ``F`` baseline images when the baseline scores are not passed in).

What fills the patch, and the defaults
--------------------------------------
The default, ``fill="patch_mean"``, replaces the patch by its own mean: the structure inside it
(a lesion's disk and rim) is gone, the local brightness stays. A constant (0, or the image's
mean, which is dark on a CT soft-tissue window since air and lungs are 0) makes a dark square in
soft tissue, and the shipped CNN was trained on lesions darker than tissue as well as brighter
ones: such a square *is* a lesion to it, so occluding anywhere in the body raises the score
(negative drops of several logits) and occluding the real lesion swaps one lesion for another.
``"image_mean"`` and any float stay available.

Measured with the shipped CNN on 40 positive 512x512 phantoms (``ct_slice`` + ``random_lesion``),
the box of :func:`saliency_bbox` held the lesion's centre for: fill 0 10/40 (patch 8, stride 8)
and 25/40 (8, 4); image mean 27/40 and 28/40; patch mean 33/40 and 38/40 (40/40 and 39/40 on
two more sets, one at 128x128). Hence the defaults: patch 8 (an eighth of the input, about a
large lesion's diameter) on a stride of 4, i.e. 16x16 cells, 256 images per frame; a box is then
typically 3-4 times the lesion's area.

Deterministic: no randomness, and the same inputs give the same chunks in the same order.

>>> import numpy as np
>>> def run(x):  # a fake model: its logit is the brightness of the block at rows 8-15, cols 40-47
...     s = x[:, 8:16, 40:48].mean(axis=(1, 2)) * 10
...     return 1 / (1 + np.exp(-s)), s
>>> img = np.zeros((1, 64, 64), np.float32); img[0, 8:16, 40:48] = 1; img[0, 30:34, 0:4] = 1
>>> [s] = explain_frames(img, run, frame_shapes=(512, 512), patch=8, stride=8, fill=0.0)
>>> s.drops.shape, s.bbox, round(s.max_drop, 3)
((8, 8), {'x': 320, 'y': 64, 'width': 64, 'height': 64, 'frame': 0}, 10.0)
>>> [s] = explain_frames(img, run, frame_shapes=(512, 512), fill=0.0)  # patch 8, stride 4
>>> s.drops.shape, s.bbox, round(s.max_drop, 3)
((16, 16), {'x': 288, 'y': 32, 'width': 128, 'height': 128, 'frame': 0}, 3.906)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

#: ``run(images (N, H, W) float32) -> (probabilities (N,), scores (N,))``; scores are logits.
Runner = Callable[[npt.NDArray[np.float32]], tuple[np.ndarray, np.ndarray]]
Fill = Literal["patch_mean", "image_mean"] | float

DEFAULT_PATCH: Final = 8
DEFAULT_STRIDE: Final = 4
DEFAULT_BATCH_MAX: Final = 256
#: A cell belongs to the saliency box when its drop is at least this fraction of the peak's.
DEFAULT_FRACTION: Final = 0.5


@dataclass(frozen=True, eq=False)
class Saliency:
    """The occlusion evidence of one frame."""

    frame: int  # the frame's index in its instance
    drops: npt.NDArray[np.float32]  # (64/stride, 64/stride) logit drops
    max_drop: float  # the map's peak, logit units (<= 0: hiding nothing lowers the score)
    bbox: dict[str, int] | None  # {x, y, width, height, frame}, original pixels; None if no drop

    def to_document(self) -> dict[str, Any] | None:
        """``{"method": "occlusion", "bbox", "max_drop"}`` for a finding, None without a box.

        >>> d = np.zeros((16, 16), np.float32); d[0, 0] = 2.5
        >>> Saliency(3, d, 2.5, saliency_bbox(d, (64, 64), 3)).to_document()["max_drop"]
        2.5
        >>> Saliency(0, -d, -2.5, None).to_document() is None
        True
        """
        if self.bbox is None:
            return None
        return {"method": "occlusion", "bbox": dict(self.bbox), "max_drop": self.max_drop}


def patch_windows(
    side: tuple[int, int], patch: int = DEFAULT_PATCH, stride: int = DEFAULT_STRIDE
) -> list[tuple[int, int, int, int]]:
    """The occluding patches of an image of ``side`` (rows, cols): ``(y0, y1, x0, x1)`` each,
    row-major over the cells, centred on the cells and clipped to the image.

    >>> patch_windows((16, 16), patch=8, stride=8)
    [(0, 8, 0, 8), (0, 8, 8, 16), (8, 16, 0, 8), (8, 16, 8, 16)]
    >>> patch_windows((8, 8), patch=8, stride=4)[:2]
    [(0, 6, 0, 6), (0, 6, 2, 8)]
    """
    rows, cols = side
    if not 1 <= stride <= patch:
        raise ValueError(f"need 1 <= stride <= patch, got stride {stride}, patch {patch}")
    if rows < stride or cols < stride or rows % stride or cols % stride:
        raise ValueError(f"image side {side} is not a multiple of the stride {stride}")
    offset = (stride - patch) // 2  # patch origin relative to its cell's origin
    out = []
    for i in range(rows // stride):
        y0 = i * stride + offset
        for j in range(cols // stride):
            x0 = j * stride + offset
            out.append((max(0, y0), min(rows, y0 + patch), max(0, x0), min(cols, x0 + patch)))
    return out


def _fill_values(
    images: npt.NDArray[np.float32], windows: Sequence[tuple[int, int, int, int]], fill: Fill
) -> npt.NDArray[np.float32]:
    """What each patch of each frame is filled with: (F, cells)."""
    frames = len(images)
    if fill == "image_mean":
        per_frame = images.mean(axis=(1, 2), dtype=np.float64)
        return np.repeat(per_frame[:, None], len(windows), axis=1).astype(np.float32)
    if fill != "patch_mean":
        return np.full((frames, len(windows)), float(fill), np.float32)
    # Patch sums from a summed-area table, in float64: one pass, however much patches overlap.
    table = np.zeros((frames, images.shape[1] + 1, images.shape[2] + 1), np.float64)
    table[:, 1:, 1:] = images.astype(np.float64).cumsum(axis=1).cumsum(axis=2)
    y0, y1, x0, x1 = (np.array(v, np.intp) for v in zip(*windows, strict=True))
    sums = table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0] + table[:, y0, x0]
    means: npt.NDArray[np.float32] = (sums / ((y1 - y0) * (x1 - x0))).astype(np.float32)
    return means


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def occlusion_maps(
    cnn_inputs: npt.NDArray[np.float32],
    run: Runner,
    patch: int = DEFAULT_PATCH,
    stride: int = DEFAULT_STRIDE,
    batch_max: int = DEFAULT_BATCH_MAX,
    fill: Fill = "patch_mean",
    baseline: npt.NDArray[np.floating[Any]] | None = None,
) -> npt.NDArray[np.float32]:
    """The logit drop of every cell of every frame: ``(F, H/stride, W/stride)`` float32.

    ``cnn_inputs`` (F, H, W) are the CNN's inputs (64x64 from :func:`~worker.inference.cnn_input`)
    of just the frames to explain (e.g. the positive ones); the maps come back in their order.
    ``baseline`` (F,) are their unoccluded scores if already known (the pipeline has them from
    inference); else they are scored too, in the same chunks. ``run`` is called
    ``ceil(F * (cells + (baseline is None)) / batch_max)`` times, never with more than
    ``batch_max`` images, and never with none (``F == 0`` calls nothing).

    >>> import numpy as np
    >>> calls = []
    >>> def run(x):  # logit = brightness of the top-left 8x8 block
    ...     calls.append(len(x)); s = x[:, :8, :8].mean(axis=(1, 2)).astype(np.float32)
    ...     return s, s
    >>> maps = occlusion_maps(np.ones((3, 64, 64), np.float32), run, patch=8, stride=8,
    ...                       batch_max=100, fill=0.0)
    >>> maps.shape, float(maps[0, 0, 0]), float(abs(maps[:, 1:, :]).max()), calls
    ((3, 8, 8), 1.0, 0.0, [100, 95])
    """
    images = np.asarray(cnn_inputs, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"cnn_inputs must be (F, H, W), got shape {images.shape}")
    if batch_max < 1:
        raise ValueError(f"batch_max must be positive, got {batch_max}")
    if isinstance(fill, str) and fill not in ("patch_mean", "image_mean"):
        raise ValueError(f"fill must be 'patch_mean', 'image_mean' or a number, got {fill!r}")
    frames, rows, cols = images.shape
    windows = patch_windows((rows, cols), patch, stride)
    grid = (rows // stride, cols // stride)
    if baseline is not None:
        base = np.asarray(baseline, dtype=np.float64).reshape(-1)
        if len(base) != frames:
            raise ValueError(f"baseline has {len(base)} scores for {frames} frames")
    cells = len(windows)
    fills = _fill_values(images, windows, fill)
    # masks[c]: the pixels patch c hides; masks[cells] hides none (a baseline image).
    masks = np.zeros((cells + 1, rows, cols), bool)
    for c, (y0, y1, x0, x1) in enumerate(windows):
        masks[c, y0:y1, x0:x1] = True
    # The stream of images to score: F baselines first (if needed), then per frame its cells.
    lead = frames if baseline is None else 0
    scores = np.empty(lead + frames * cells, np.float64)
    for chunk in _chunks(len(scores), batch_max):
        items = np.arange(chunk.start, chunk.stop)
        is_base = items < lead
        f_idx, c_idx = np.divmod(np.maximum(items - lead, 0), cells)
        f_idx = np.where(is_base, items, f_idx)
        c_idx = np.where(is_base, cells, c_idx)
        value = fills[f_idx, np.minimum(c_idx, cells - 1)]  # unused where nothing is hidden
        batch = images[f_idx]  # a copy (fancy indexing)
        np.copyto(batch, value[:, None, None], where=masks[c_idx])
        _, score = run(batch)
        score = np.asarray(score, dtype=np.float64).reshape(-1)
        if len(score) != len(chunk):
            raise ValueError(f"run returned {len(score)} scores for {len(chunk)} images")
        scores[chunk.start : chunk.stop] = score
    if baseline is None:
        base = scores[:frames]
    drops = base[:, None] - scores[lead:].reshape(frames, cells)
    # Spread each patch's drop over the pixels it covers, average, then average per cell.
    cover = masks[:cells].reshape(cells, rows * cols).astype(np.float64)
    per_pixel = (drops @ cover) / cover.sum(axis=0)
    out = per_pixel.reshape(frames, grid[0], stride, grid[1], stride).mean(axis=(2, 4))
    result: npt.NDArray[np.float32] = out.astype(np.float32)
    return result


def max_drop(drops: npt.NDArray[np.floating[Any]]) -> float:
    """The peak cell's drop, in logit units (<= 0 when hiding no cell lowers the score).

    With overlapping patches it is the mean drop of the patches over that cell, so it is at most
    the largest single patch's drop; with ``patch == stride`` it is that patch's drop.

    >>> max_drop(np.array([[0.5, -2.0], [1.25, 0.0]]))
    1.25
    """
    return float(np.max(drops))


def saliency_bbox(
    drops: npt.NDArray[np.floating[Any]],
    frame_shape: tuple[int, int],
    frame_index: int = 0,
    fraction: float = DEFAULT_FRACTION,
) -> dict[str, int] | None:
    """The box of the cells whose drop is at least ``fraction`` of the peak (positive) drop, in
    pixels of the original frame of ``frame_shape`` (rows, cols): ``{x, y, width, height,
    frame}`` like ``strongest_edge_bbox``; None when no cell lowers the score.

    :func:`~worker.inference.cnn_input` resizes the whole frame to 64x64 with area interpolation,
    each axis on its own (no padding, aspect not kept), so input column ``u`` spans original
    columns ``[u * cols / 64, (u + 1) * cols / 64)``, likewise for rows. The box is widened to
    whole pixels (floor of its start, ceiling of its end), so it always covers the cells.

    >>> d = np.zeros((8, 8)); d[2, 5] = 3.0; d[3, 5] = 1.5; d[6, 0] = 1.0
    >>> saliency_bbox(d, (512, 512), frame_index=2)
    {'x': 320, 'y': 128, 'width': 64, 'height': 128, 'frame': 2}
    >>> saliency_bbox(d, (100, 300))  # non-square: each axis scales on its own
    {'x': 187, 'y': 25, 'width': 38, 'height': 25, 'frame': 0}
    >>> saliency_bbox(-np.ones((8, 8)), (64, 64)) is None
    True
    """
    values = np.asarray(drops, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"drops must be one frame's (rows, cols) map, got shape {values.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rows, cols = frame_shape
    if rows < 1 or cols < 1:
        raise ValueError(f"frame_shape must be positive, got {frame_shape}")
    peak = float(values.max())
    if not peak > 0.0:
        return None
    hot_rows, hot_cols = np.nonzero(values >= fraction * peak)
    grid_rows, grid_cols = values.shape
    y_scale, x_scale = rows / grid_rows, cols / grid_cols
    y0 = math.floor(int(hot_rows.min()) * y_scale)
    y1 = min(rows, math.ceil((int(hot_rows.max()) + 1) * y_scale))
    x0 = math.floor(int(hot_cols.min()) * x_scale)
    x1 = min(cols, math.ceil((int(hot_cols.max()) + 1) * x_scale))
    return {
        "x": x0,
        "y": y0,
        "width": max(1, x1 - x0),
        "height": max(1, y1 - y0),
        "frame": frame_index,
    }


def _shapes(
    frame_shapes: tuple[int, int] | Sequence[tuple[int, int]], count: int
) -> list[tuple[int, int]]:
    """One (rows, cols) per frame, from one shape for all or a sequence of them."""
    if len(frame_shapes) == 2 and all(isinstance(v, int | np.integer) for v in frame_shapes):
        rows, cols = cast(tuple[int, int], frame_shapes)
        return [(int(rows), int(cols))] * count
    return [(int(r), int(c)) for r, c in cast(Sequence[tuple[int, int]], frame_shapes)]


def explain_frames(
    cnn_inputs: npt.NDArray[np.float32],
    run: Runner,
    frames: Sequence[int] | None = None,
    frame_shapes: tuple[int, int] | Sequence[tuple[int, int]] = (64, 64),
    baseline: npt.NDArray[np.floating[Any]] | None = None,
    patch: int = DEFAULT_PATCH,
    stride: int = DEFAULT_STRIDE,
    batch_max: int = DEFAULT_BATCH_MAX,
    fill: Fill = "patch_mean",
    fraction: float = DEFAULT_FRACTION,
) -> list[Saliency]:
    """:func:`occlusion_maps` and :func:`saliency_bbox` for a subset of frames, aligned with it.

    ``cnn_inputs`` (F, 64, 64) are the frames to explain (e.g. ``prepared.cnn_inputs[positive]``,
    possibly from several instances at once, to share the model calls); ``frames`` their indices
    in their instances (default ``0..F-1``), written into each box; ``frame_shapes`` the
    original (rows, cols), one for all or one per frame; ``baseline`` their logits if known.

    >>> import numpy as np
    >>> def run(x):  # logit = brightness of rows 0-7, cols 56-63
    ...     s = x[:, :8, 56:].mean(axis=(1, 2)); return s, s
    >>> imgs = np.zeros((2, 64, 64), np.float32); imgs[1, :8, 56:] = 2.0
    >>> out = explain_frames(imgs, run, frames=[4, 9], frame_shapes=[(64, 64), (128, 256)],
    ...                      fill=0.0)
    >>> [(s.frame, s.bbox, s.max_drop) for s in out]
    [(4, None, 0.0), (9, {'x': 224, 'y': 0, 'width': 32, 'height': 16, 'frame': 9}, 1.125)]
    """
    count = len(cnn_inputs)
    indices = list(range(count)) if frames is None else [int(f) for f in frames]
    if len(indices) != count:
        raise ValueError(f"{len(indices)} frame indices for {count} inputs")
    shapes = _shapes(frame_shapes, count)
    if len(shapes) != count:
        raise ValueError(f"{len(shapes)} frame shapes for {count} inputs")
    maps = occlusion_maps(cnn_inputs, run, patch, stride, batch_max, fill, baseline)
    return [
        Saliency(
            frame=index,
            drops=drops,
            max_drop=max_drop(drops),
            bbox=saliency_bbox(drops, shape, index, fraction),
        )
        for index, shape, drops in zip(indices, shapes, maps, strict=True)
    ]


__all__ = [
    "DEFAULT_BATCH_MAX",
    "DEFAULT_FRACTION",
    "DEFAULT_PATCH",
    "DEFAULT_STRIDE",
    "Fill",
    "Runner",
    "Saliency",
    "explain_frames",
    "max_drop",
    "occlusion_maps",
    "patch_windows",
    "saliency_bbox",
]
