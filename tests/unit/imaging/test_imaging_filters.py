"""Mean, median and Gaussian filters against scipy.ndimage on real DICOM slices and Shepp-Logan.

Tolerances, and why:

* mean and Gaussian: OpenCV filters float32 with float32 arithmetic (a running sum for the box
  filter), scipy in float64; the results agree to ``1e-5`` of the image's value range
  (float32 has a 24-bit mantissa, ~6e-8, and a few hundred additions accumulate rounding).
  Borders match exactly in kind: OpenCV ``BORDER_REFLECT_101`` is scipy ``mode="mirror"``.
* median: exact equality. A median selects one of the input values, so there is no rounding;
  the border is replicated on both sides (OpenCV ``medianBlur``'s own rule, scipy
  ``mode="nearest"``), for the OpenCV sizes 3 and 5 and for the exact fallback beyond.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from worker.imaging import gaussian_filter, gaussian_ksize, mean_filter, median_filter

REL_TOL = 1e-5


def _assert_close(
    ours: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float64],
    image: npt.NDArray[np.float32],
) -> None:
    span = float(image.max() - image.min())
    assert ours.dtype == np.float32
    assert ours.shape == image.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=REL_TOL * span)


@pytest.mark.parametrize("ksize", [3, 5, 7])
def test_mean_filter_matches_scipy_uniform(
    reference_images: dict[str, npt.NDArray[np.float32]], ksize: int
) -> None:
    for image in reference_images.values():
        ref = ndi.uniform_filter(image.astype(np.float64), ksize, mode="mirror")
        _assert_close(mean_filter(image, ksize), ref, image)


def test_default_mean_filter_is_the_3x3_kernel_of_ones_over_9(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> None:
    kernel = np.ones((3, 3)) / 9.0
    for image in reference_images.values():
        ref = ndi.convolve(image.astype(np.float64), kernel, mode="mirror")
        _assert_close(mean_filter(image), ref, image)


@pytest.mark.parametrize("sigma", [0.8, 1.0, 1.5, 2.5])
def test_gaussian_filter_matches_scipy(
    reference_images: dict[str, npt.NDArray[np.float32]], sigma: float
) -> None:
    for image in reference_images.values():
        ref = ndi.gaussian_filter(image.astype(np.float64), sigma, mode="mirror", truncate=4.0)
        _assert_close(gaussian_filter(image, sigma), ref, image)


def test_gaussian_kernel_size_is_scipys() -> None:
    for sigma in (0.5, 0.8, 1.0, 1.3, 2.0, 3.7):
        assert gaussian_ksize(sigma) == 2 * int(4.0 * sigma + 0.5) + 1


@pytest.mark.parametrize("ksize", [3, 5, 7, 9])
def test_median_filter_matches_scipy_exactly(
    reference_images: dict[str, npt.NDArray[np.float32]], ksize: int
) -> None:
    for name, image in reference_images.items():
        if ksize > 5 and image.size > 100_000:
            image = image[:128, :128]  # the exact fallback is slow; a corner is enough
        ref = ndi.median_filter(image, ksize, mode="nearest")
        ours = median_filter(image, ksize)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref, err_msg=name)


@pytest.mark.parametrize("ksize", [3, 5, 7])
def test_filters_keep_16_bit_precision(ksize: int) -> None:
    # Values 1 apart over a 60000 span: squeezing to 8 bits first would merge them.
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 60000, size=(40, 50), dtype=np.uint16)
    ref_median = ndi.median_filter(raw, ksize, mode="nearest").astype(np.float32)
    np.testing.assert_array_equal(median_filter(raw, ksize), ref_median)
    ref_mean = ndi.uniform_filter(raw.astype(np.float64), ksize, mode="mirror")
    np.testing.assert_allclose(mean_filter(raw, ksize), ref_mean, rtol=0, atol=0.05)


def test_median_of_8_bit_input_uses_every_kernel_size() -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(30, 30), dtype=np.uint8)
    for ksize in (3, 7, 11):
        ref = ndi.median_filter(raw, ksize, mode="nearest").astype(np.float32)
        np.testing.assert_array_equal(median_filter(raw, ksize), ref)


def test_filters_survive_frames_smaller_than_their_kernel() -> None:
    tiny = np.array([[0.0, 1000.0], [-1000.0, 5.0]], np.float32)
    for out in (
        mean_filter(tiny, 5),
        gaussian_filter(tiny, 2.0),
        median_filter(tiny, 3),
        median_filter(tiny, 9),
    ):
        assert out.shape == (2, 2) and bool(np.isfinite(out).all())
    np.testing.assert_array_equal(
        median_filter(tiny, 9), ndi.median_filter(tiny, 9, mode="nearest")
    )


@pytest.mark.parametrize("ksize", [0, 2, -3])
def test_filters_reject_even_or_non_positive_kernels(ksize: int) -> None:
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="odd"):
        mean_filter(image, ksize)
    with pytest.raises(ValueError, match="odd"):
        median_filter(image, ksize)


def test_filters_reject_non_2d_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        gaussian_filter(np.zeros((2, 3, 4), np.float32))
