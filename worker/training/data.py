"""The training and evaluation data: deterministic CT phantoms with and without a lesion.

Every sample is a square ``worker.phantoms.ct_slice`` of one of :data:`PHANTOM_SIZES` pixels
(128, 256 or 512 on a side, in turn: sample ``i`` has size ``PHANTOM_SIZES[(i // 2) % 3]``, so
each size holds a third of every split with balanced labels). Odd-numbered samples carry one
lesion from ``random_lesion`` (radius 2-6 % of the field, contrast +-60..200 HU). Each slice goes
through the very code that serves it: ``worker.imaging.analyze_frame(hu, "CT")`` gives the
feature vector (the SVM's input) and the soft-tissue window, which :func:`cnn_input` resizes to
the CNN's 64x64 input. Training and serving preprocessing are therefore identical.

Why several sizes: the phantom is drawn relative to the field, so at 512 pixels the same anatomy
covers four times as many pixels as at 128. Features of edges and texture are per pixel and
change with that (the gradient mean and percentiles, edge density, edge components per 10,000
pixels, co-occurrence contrast and correlation), and a model trained at one size does not carry
over to another: the SVM trained at 128 alone scored an AUC of 0.5 at 256 and 512.

The label means "a lesion is visible in the soft-tissue window": ``random_lesion`` often places
a lesion inside a lung, where -850 HU plus its contrast stays below the window and the slice is
pixel-for-pixel the lesion-free one. Such a lesion is redrawn (from the same seeded generator)
until at least half of its disk changes the window by more than 0.05, so no positive is
invisible. Splits use disjoint seed streams: ``SeedSequence([seed, split, index])``.

>>> s = make_split("test", 4, seed=0)
>>> s.images.shape, s.labels.tolist(), s.sizes.tolist()
((4, 64, 64), [0, 1, 0, 1], [128, 128, 256, 256])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from worker.inference.models import cnn_input
from worker.phantoms import Lesion, ct_slice, random_lesion

#: The phantom sizes (pixels on a side) of every split, in turn.
PHANTOM_SIZES: Final = (128, 256, 512)
#: The default size of a single :func:`sample_slice`.
PHANTOM_SIZE: Final = 128
#: Split name -> (seed-stream code, default number of samples). The test split is the held-out
#: set; the calibration split fits the probability calibration and the input domain's threshold.
#: Each number is a multiple of 6: balanced labels at every size.
SPLITS: Final[dict[str, tuple[int, int]]] = {
    "train": (1, 2100),
    "calibration": (2, 900),
    "test": (3, 900),
}
VISIBLE_DELTA: Final = 0.05  # change in the [0, 1] window that counts as visible
VISIBLE_FRACTION: Final = 0.5  # of the lesion disk's area
MAX_REDRAWS: Final = 200
#: Above this a phantom pixel is inside the body (air is -1000 HU, noise 12 HU: 6 sigma).
BODY_HU: Final = -925.0


@dataclass(frozen=True)
class Split:
    """One split: CNN inputs (N, 64, 64), feature vectors (N, F), labels (N,) 0/1, and the
    phantom size (pixels on a side) of each sample (N,)."""

    name: str
    images: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    redraws: int  # lesions redrawn because invisible in the window
    sizes: np.ndarray


def _soft_tissue(hu: np.ndarray) -> np.ndarray:
    from worker.imaging.window import CT_WINDOWS, window

    return window(hu, *CT_WINDOWS["soft_tissue"])


def _visible(lesion: Lesion, hu: np.ndarray, base: np.ndarray) -> bool:
    """At least :data:`VISIBLE_FRACTION` of the lesion's disk changes the window by more than
    :data:`VISIBLE_DELTA` between ``base`` and ``hu`` (only the disk's bounding box can)."""
    box = _box(lesion, base.shape[0])
    changed = np.abs(_soft_tissue(hu[box]) - _soft_tissue(base[box])) > VISIBLE_DELTA
    return bool(changed.sum() >= VISIBLE_FRACTION * np.pi * lesion.radius**2)


def _box(lesion: Lesion, size: int) -> tuple[slice, slice]:
    r = lesion.radius + 1.0
    rows = slice(max(0, int(lesion.row - r)), min(size, int(lesion.row + r) + 2))
    cols = slice(max(0, int(lesion.col - r)), min(size, int(lesion.col + r) + 2))
    return rows, cols


def _preview(lesion: Lesion, base: np.ndarray) -> np.ndarray:
    """``base`` with the lesion's contrast added on its disk inside the body (``base`` above
    :data:`BODY_HU`): ``ct_slice``'s lesion up to float32 rounding, at the cost of a crop."""
    rows, cols = _box(lesion, base.shape[0])
    hu = base.copy()
    # The disk exactly as ct_slice draws it: float32 pixel coordinates.
    yy, xx = np.mgrid[rows, cols].astype(np.float32)
    disk = (xx - lesion.col) ** 2 + (yy - lesion.row) ** 2 <= lesion.radius**2
    crop = hu[rows, cols]
    crop[disk & (crop > BODY_HU)] += lesion.contrast_hu
    return hu


def _visible_lesion(
    rng: np.random.Generator, slice_seed: int, base: np.ndarray, size: int
) -> tuple[Lesion, np.ndarray, int]:
    """A lesion that shows in the soft-tissue window, its slice, and how many were redrawn.

    Each draw is first tried on a cheap :func:`_preview`; a lesion that shows there is drawn
    for real by ``ct_slice`` and must show again (so the criterion holds exactly on the slice
    returned), else drawing goes on.
    """
    for tries in range(MAX_REDRAWS):
        lesion = random_lesion(rng, size)
        if not _visible(lesion, _preview(lesion, base), base):
            continue
        hu = ct_slice(slice_seed, size, lesion=lesion)
        if _visible(lesion, hu, base):
            return lesion, hu, tries
    raise RuntimeError(f"no visible lesion in {MAX_REDRAWS} draws for slice {slice_seed}")


def sample_slice(
    rng: np.random.Generator, with_lesion: bool, size: int = PHANTOM_SIZE
) -> tuple[np.ndarray, int]:
    """One ``size`` x ``size`` phantom in HU (with a visible lesion if asked) and how many
    lesions were redrawn.

    >>> hu, redraws = sample_slice(np.random.default_rng(5), with_lesion=True)
    >>> hu.shape
    (128, 128)
    """
    slice_seed = int(rng.integers(2**31))
    hu = ct_slice(slice_seed, size)
    if not with_lesion:
        return hu, 0
    _, hu, tries = _visible_lesion(rng, slice_seed, hu, size)
    return hu, tries


def make_split(
    name: str, n: int | None = None, seed: int = 0, sizes: tuple[int, ...] = PHANTOM_SIZES
) -> Split:
    """Generate split ``name`` ("train", "calibration" or "test") of ``n`` samples, the sizes
    taking turns in pairs (one normal, one lesion)."""
    from worker.imaging import FEATURE_NAMES, analyze_frame

    code, default_n = SPLITS[name]
    n = default_n if n is None else n
    images = np.zeros((n, 64, 64), np.float32)
    features = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    labels = np.zeros(n, np.int8)
    side = np.zeros(n, np.int32)
    redraws = 0
    for i in range(n):
        # Alternate labels: balanced classes, each spread evenly over the seed stream and sizes.
        labels[i] = i % 2
        side[i] = sizes[(i // 2) % len(sizes)]
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, i]))
        hu, tries = sample_slice(rng, with_lesion=bool(labels[i]), size=int(side[i]))
        redraws += tries
        analysis = analyze_frame(hu, "CT")
        images[i] = cnn_input(analysis.windowed)
        features[i] = analysis.features
    return Split(name, images, features, labels, redraws, side)
