"""The compiled loops against their numpy and OpenCV formulations: identical, not just close.

Canny: every edge pixel, every index, the component count and the strongest box must be equal
on CT-like phantoms at several noise levels, pure and quantised noise, thin and tiny frames,
real pydicom slices, and hand-made ties, over a spread of thresholds. Texture: the pair counts
and matrices must equal ``cv2.convertScaleAbs`` quantising and ``cv2.calcHist`` counting,
rounding ties included.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt
import pytest

from tests.unit.imaging.canny_reference import reference_canny
from worker.imaging import gaussian_filter, sobel
from worker.imaging.edges import Gradient, auto_thresholds, orientation
from worker.imaging.feature_vector import pair_counts, quantise
from worker.imaging.kernels import (
    interpolated_canny,
    orientation_sums,
    texture_pair_counts,
    warm_up,
)
from worker.phantoms import ct_slice


def _assert_same(g: Gradient, low: float, high: float) -> int:
    ours = interpolated_canny(g.gx, g.gy, g.magnitude, low, high)
    ref = reference_canny(g.gx, g.gy, g.magnitude, low, high)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])
    assert ours[1].dtype == np.intp
    assert ours[2:] == ref[2:]
    return int(ours[1].size)


def _threshold_pairs(g: Gradient) -> list[tuple[float, float]]:
    low, high = auto_thresholds(g.magnitude)
    peak = float(g.magnitude.max())
    return [(low, high), (low / 3, high / 3), (low, low), (peak / 2, peak), (1e-30, 1e-30)]


@pytest.mark.parametrize("noise_hu", [0.0, 5.0, 25.0, 80.0])
def test_equal_on_ct_phantoms(noise_hu: float) -> None:
    edges = 0
    for seed in range(3):
        g = sobel(gaussian_filter(ct_slice(seed, 256, noise_hu=noise_hu), 1.0))
        for low, high in _threshold_pairs(g):
            edges += _assert_same(g, low, high)
    assert edges > 0  # the comparison covered real edges, not only empty maps


def test_equal_on_real_slices(reference_images: dict[str, npt.NDArray[np.float32]]) -> None:
    for image in reference_images.values():
        g = sobel(gaussian_filter(image, 1.0))
        for low, high in _threshold_pairs(g):
            _assert_same(g, low, high)


def test_equal_on_noise_quantised_noise_and_odd_shapes() -> None:
    rng = np.random.default_rng(7)
    for shape in [(3, 3), (3, 200), (200, 3), (1, 50), (2, 2), (97, 61), (300, 257)]:
        for rounded in (False, True):
            image = rng.normal(0.0, 10.0, shape).astype(np.float32)
            if rounded:  # many exact ties between neighbours
                image = np.rint(image / 10.0).astype(np.float32)
            g = sobel(image)
            for low, high in [(2.0, 5.0), (0.5, 40.0), (10.0, 10.0)]:
                _assert_same(g, low, high)


def test_equal_tie_break_between_equal_components() -> None:
    # Two identical squares: equal totals, so the box must be the first one in raster order.
    image = np.zeros((40, 40), np.float32)
    image[5:12, 25:32] = 100.0
    image[20:27, 5:12] = 100.0
    g = sobel(image)
    assert _assert_same(g, 100.0, 200.0) > 0
    assert interpolated_canny(g.gx, g.gy, g.magnitude, 100.0, 200.0)[3] == (24, 4, 9, 9)


def test_non_finite_gradients_never_become_edges() -> None:
    image = np.zeros((16, 16), np.float32)
    image[:, 8:] = 100.0  # edges on columns 7 and 8
    g = sobel(image)
    mag, gx = g.magnitude.copy(), g.gx.copy()
    mag[5, 7] = np.nan
    gx[10, 8] = np.nan
    bad = Gradient(gx, g.gy, mag)
    assert _assert_same(bad, 100.0, 200.0) > 0
    edges = interpolated_canny(bad.gx, bad.gy, bad.magnitude, 100.0, 200.0)[0]
    assert edges[5, 7] == 0 and edges[10, 8] == 0 and edges[6, 7] == 255


def test_warm_up_compiles() -> None:
    warm_up()  # a second call is free: compiled once per process
    edges, idx, count, bbox = interpolated_canny(*[np.zeros((4, 4), np.float32)] * 3, 1.0, 2.0)
    assert (int(edges.max()), idx.size, count, bbox) == (0, 0, 0, None)


def _windows() -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(3)
    out = [np.clip(ct_slice(seed, 128, noise_hu=25.0) / 400.0 + 0.5, 0.0, 1.0) for seed in (0, 1)]
    out += [rng.uniform(0.0, 1.0, shape).astype(np.float32) for shape in [(1, 1), (1, 9), (9, 1)]]
    # Every level and every half-way value between levels (ties round half to even).
    out.append((np.arange(31, dtype=np.float32) / np.float32(30.0)).reshape(1, 31))
    out.append(np.tile(np.float32([0.0, 1.0 / 30.0, 0.1, 1.0]), (7, 5)))
    return [np.asarray(w, np.float32) for w in out]


@pytest.mark.parametrize("row_step", [1, 2, 3, 4])
def test_texture_pair_counts_equal_opencv_quantise_and_count(row_step: int) -> None:
    for windowed in _windows():
        ours = texture_pair_counts(windowed, row_step)
        ref = pair_counts(quantise(windowed), row_step)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_array_equal(a, b)
        q = quantise(windowed).astype(np.int64)
        horizontal, vertical = texture_pair_counts(windowed, row_step)
        rows = q[::row_step]
        expected = np.bincount((rows[:, :-1] * 16 + rows[:, 1:]).ravel(), minlength=256)
        np.testing.assert_array_equal(horizontal, expected)
        assert int(vertical.sum()) == q.shape[1] * len(range(0, q.shape[0] - 1, row_step))


def test_texture_pair_counts_rejects_a_zero_row_step() -> None:
    with pytest.raises(ValueError, match="row_step"):
        texture_pair_counts(np.zeros((4, 4), np.float32), 0)


def _numpy_orientation_sums(
    gx: npt.NDArray[np.float32], gy: npt.NDArray[np.float32], w: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    # The feature vector's former numpy path: orientation(), then bincount.
    half_bin = 90.0 / 8
    deg = orientation(gx, gy).astype(np.float64)
    bins = ((deg + half_bin) // (2 * half_bin)).astype(np.intp) % 8
    return np.bincount(bins, weights=w.astype(np.float64), minlength=8)


def test_orientation_sums_equal_the_numpy_path() -> None:
    rng = np.random.default_rng(11)
    n = 200_000
    gx = rng.normal(0.0, 100.0, n).astype(np.float32)
    gy = rng.normal(0.0, 100.0, n).astype(np.float32)
    # Angles on and next to every bin boundary and axis, signed zeros, extreme magnitudes.
    edges_deg = np.concatenate([np.arange(0.0, 360.0, 11.25), [-1e-7, 1e-7, 179.9999, 180.0]])
    angles = np.radians(np.repeat(edges_deg, 3)) + np.tile([-1e-6, 0.0, 1e-6], edges_deg.size)
    gx = np.concatenate([gx, np.cos(angles).astype(np.float32), np.float32([0.0, -0.0, 1e-30])])
    gy = np.concatenate([gy, np.sin(angles).astype(np.float32), np.float32([-0.0, 0.0, 1e30])])
    weights = np.hypot(gx, gy).astype(np.float32) + np.float32(1.0)
    np.testing.assert_array_equal(
        orientation_sums(gx, gy, weights, 8), _numpy_orientation_sums(gx, gy, weights)
    )


def test_texture_levels_are_clipped_as_quantise_clips() -> None:
    rng = np.random.default_rng(5)
    windowed = rng.uniform(-2.0, 3.0, (40, 33)).astype(np.float32)
    ours, ref = texture_pair_counts(windowed, 2), pair_counts(quantise(windowed), 2)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    windowed[::3, ::5] = np.nan  # never an index outside the histograms
    horizontal, vertical = texture_pair_counts(windowed, 2)
    assert int(horizontal.sum()) == 20 * 32 and int(vertical.sum()) == 20 * 33


def test_no_loop_reads_or_writes_outside_its_arrays() -> None:
    # numba does not check indices by default: the same loops compiled with boundscheck=True
    # raise IndexError on any access outside an array, on edge cases of every kind.
    from worker.imaging import kernels, reductions

    loops = (kernels._kernel, kernels._pair_counts, kernels._orientation_sums)
    summaries = (reductions._sum_and_squares, reductions._shape_moments)
    checked = {
        f.__name__: numba.njit(boundscheck=True, error_model="numpy")(f)
        for f in (*loops, *summaries, reductions._texture_summary)
    }
    rng = np.random.default_rng(9)
    for shape in [(1, 1), (1, 7), (7, 1), (2, 2), (3, 3), (4, 9), (64, 48)]:
        image = rng.normal(0.0, 50.0, shape).astype(np.float32)
        image[0, 0] = np.nan
        g = sobel(np.nan_to_num(image))
        mag = g.magnitude.copy()
        mag.ravel()[:: max(1, mag.size // 5)] = np.nan
        for low, high in [(1e-30, 1e-30), (1.0, 50.0), (np.inf, np.inf)]:
            args = (g.gx, g.gy, mag, np.float32(low), np.float32(high))
            checked["_kernel"](*args)
            checked["_kernel"](g.gx, g.gy, g.magnitude, np.float32(low), np.float32(high))
        for step in (1, 2, 5):
            checked["_pair_counts"](image * np.float32(0.02), step)
        flat = image.ravel()
        checked["_orientation_sums"](flat, np.abs(np.nan_to_num(flat)), 8)
        checked["_sum_and_squares"](image)
        checked["_shape_moments"](flat)
    counts = rng.integers(0, 50, 256).astype(np.int64)
    checked["_texture_summary"](counts, np.zeros(256, np.int64))


def test_mismatched_or_flat_arrays_are_refused_before_the_loops() -> None:
    square, wide = np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        interpolated_canny(square, square, wide, 1.0, 2.0)
    with pytest.raises(ValueError, match="2-D"):
        interpolated_canny(*[np.zeros(16, np.float32)] * 3, 1.0, 2.0)
    with pytest.raises(ValueError, match="2-D"):
        texture_pair_counts(np.zeros(16, np.float32))
    with pytest.raises(ValueError, match="weights"):
        orientation_sums(square, square, np.zeros(3, np.float32), 8)


def test_without_a_writable_cache_the_loops_compile_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.imaging import compiled, kernels

    real_njit = numba.njit

    def njit(**options: object) -> object:
        if options.get("cache"):  # as numba does when no cache location is writable
            raise RuntimeError("cannot cache function '_pair_counts': no locator available")
        return real_njit(**options)

    monkeypatch.setattr(compiled.numba, "njit", njit)
    caplog.set_level("INFO", logger="worker.imaging.compiled")
    loop = compiled.compile_loop(kernels._pair_counts)
    horizontal, _ = loop(np.zeros((2, 3), np.float32), 1)
    assert int(horizontal[0]) == 4  # two rows of two (0, 0) pairs
    assert "compiled _pair_counts not cached" in caplog.text
