"""The training and evaluation data: deterministic CT phantoms with and without a lesion.

Every sample is a ``worker.phantoms.ct_slice`` of 128x128 pixels; odd-numbered samples carry one
lesion from ``random_lesion`` (radius 2-6 % of the field, contrast +-60..200 HU). Each slice goes
through the very code that serves it: ``worker.imaging.analyze_frame(hu, "CT")`` gives the
feature vector (the SVM's input) and the soft-tissue window, which :func:`cnn_input` resizes to
the CNN's 64x64 input. Training and serving preprocessing are therefore identical.

The label means "a lesion is visible in the soft-tissue window": ``random_lesion`` often places
a lesion inside a lung, where -850 HU plus its contrast stays below the window and the slice is
pixel-for-pixel the lesion-free one. Such a lesion is redrawn (from the same seeded generator)
until at least half of its disk changes the window by more than 0.05, so no positive is
invisible. Splits use disjoint seed streams: ``SeedSequence([seed, split, index])``.

>>> s = make_split("test", 4, seed=0)
>>> s.images.shape, s.labels.tolist()
((4, 64, 64), [0, 1, 0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from worker.inference.models import cnn_input
from worker.phantoms import Lesion, ct_slice, random_lesion

PHANTOM_SIZE: Final = 128
#: Split name -> (seed-stream code, default size). The test split is the held-out set.
SPLITS: Final[dict[str, tuple[int, int]]] = {
    "train": (1, 2000),
    "calibration": (2, 400),
    "test": (3, 600),
}
VISIBLE_DELTA: Final = 0.05  # change in the [0, 1] window that counts as visible
VISIBLE_FRACTION: Final = 0.5  # of the lesion disk's area
MAX_REDRAWS: Final = 200


@dataclass(frozen=True)
class Split:
    """One split: CNN inputs (N, 64, 64), feature vectors (N, F), labels (N,) 0/1."""

    name: str
    images: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    redraws: int  # lesions redrawn because invisible in the window


def _soft_tissue(hu: np.ndarray) -> np.ndarray:
    from worker.imaging.window import CT_WINDOWS, window

    return window(hu, *CT_WINDOWS["soft_tissue"])


def _visible_lesion(
    rng: np.random.Generator, slice_seed: int, base: np.ndarray
) -> tuple[Lesion, np.ndarray, int]:
    """A lesion that shows in the soft-tissue window, its slice, and how many were redrawn."""
    base_win = _soft_tissue(base)
    for tries in range(MAX_REDRAWS):
        lesion = random_lesion(rng, PHANTOM_SIZE)
        hu = ct_slice(slice_seed, PHANTOM_SIZE, lesion=lesion)
        changed = np.abs(_soft_tissue(hu) - base_win) > VISIBLE_DELTA
        if changed.sum() >= VISIBLE_FRACTION * np.pi * lesion.radius**2:
            return lesion, hu, tries
    raise RuntimeError(f"no visible lesion in {MAX_REDRAWS} draws for slice {slice_seed}")


def sample_slice(rng: np.random.Generator, with_lesion: bool) -> tuple[np.ndarray, int]:
    """One phantom in HU (with a visible lesion if asked) and how many lesions were redrawn.

    >>> hu, redraws = sample_slice(np.random.default_rng(5), with_lesion=True)
    >>> hu.shape
    (128, 128)
    """
    slice_seed = int(rng.integers(2**31))
    hu = ct_slice(slice_seed, PHANTOM_SIZE)
    if not with_lesion:
        return hu, 0
    _, hu, tries = _visible_lesion(rng, slice_seed, hu)
    return hu, tries


def make_split(name: str, n: int | None = None, seed: int = 0) -> Split:
    """Generate split ``name`` ("train", "calibration" or "test") of ``n`` samples."""
    from worker.imaging import FEATURE_NAMES, analyze_frame

    code, default_n = SPLITS[name]
    n = default_n if n is None else n
    images = np.zeros((n, 64, 64), np.float32)
    features = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    labels = np.zeros(n, np.int8)
    redraws = 0
    for i in range(n):
        # Alternate labels: balanced classes, each spread evenly over the seed stream.
        labels[i] = i % 2
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, i]))
        hu, tries = sample_slice(rng, with_lesion=bool(labels[i]))
        redraws += tries
        analysis = analyze_frame(hu, "CT")
        images[i] = cnn_input(analysis.windowed)
        features[i] = analysis.features
    return Split(name, images, features, labels, redraws)
