"""The compiled reductions against numpy, scipy and scikit-image on the same data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from skimage.feature import graycomatrix, graycoprops

from worker.imaging.feature_vector import pair_counts
from worker.imaging.reductions import shape_moments, sum_and_squares, texture_summary
from worker.phantoms import ct_slice


def test_sums_match_numpy_in_double_precision() -> None:
    rng = np.random.default_rng(3)
    for a in (ct_slice(2, 256, noise_hu=25.0), rng.normal(5.0, 1e3, (37, 53)).astype(np.float32)):
        total, squares = sum_and_squares(a)
        wide = a.astype(np.float64)
        assert total == pytest.approx(float(wide.sum()), rel=1e-12)
        assert squares == pytest.approx(float((wide * wide).sum()), rel=1e-12)
    # A non-contiguous view is summed as what it shows.
    view = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert sum_and_squares(view) == (30.0, 220.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_sum_is_finite_exactly_when_every_element_is(bad: float) -> None:
    a = np.full((64, 64), 3.0e38, np.float32)  # finite extremes do not overflow a double
    assert np.isfinite(sum_and_squares(a)).all()
    a[40, 7] = bad
    assert not np.isfinite(sum_and_squares(a)[0])


def test_shape_moments_match_scipy() -> None:
    rng = np.random.default_rng(4)
    for sample in (
        rng.gamma(2.0, 50.0, 8000).astype(np.float32),
        ct_slice(1, 128).ravel(),
        np.float32([0, 0, 0, 1]),
    ):
        skew, kurt = shape_moments(sample)
        assert skew == pytest.approx(stats.skew(sample.astype(np.float64)), rel=1e-9)
        assert kurt == pytest.approx(stats.kurtosis(sample.astype(np.float64)), rel=1e-9)
    assert shape_moments(np.full(100, 7.0, np.float32)) == (0.0, 0.0)


def test_texture_summary_matches_scikit_image_and_scipy() -> None:
    rng = np.random.default_rng(6)
    for q in (rng.integers(0, 16, (40, 31)).astype(np.uint8), np.zeros((8, 8), np.uint8)):
        entropy, *props = texture_summary(*pair_counts(q))
        p = graycomatrix(q, [1], [0.0, np.pi / 2], levels=16, symmetric=True, normed=True)
        names = ("contrast", "homogeneity", "energy", "correlation")
        expected = [graycoprops(p, name).mean() for name in names]
        np.testing.assert_allclose(props, expected, rtol=1e-9, atol=1e-12)
        assert entropy == pytest.approx(stats.entropy(p[:, :, 0, 0].sum(axis=1), base=2))


def test_texture_summary_without_pairs_is_a_flat_texture() -> None:
    none = np.zeros(256, np.int64)
    assert texture_summary(none, none) == (0.0, 0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="256 pair counts"):
        texture_summary(np.zeros(255, np.int64), none)
