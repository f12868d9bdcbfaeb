"""Sobel, gradient magnitude, orientation and Canny against scipy.ndimage and scikit-image.

Tolerances, and why:

* Sobel x/y and magnitude: OpenCV works in float32, scipy in float64; they agree to ``1e-5`` of
  the largest magnitude (float32 rounding over a 3x3 kernel). Borders match in kind
  (``BORDER_REFLECT_101`` = scipy ``mode="mirror"``).
* Canny: compared with ``skimage.feature.canny`` on the same frame, same sigma, same border
  rule and the *same thresholds* (ours, from the auto rule), by the Dice coefficient
  2|A∩B| / (|A|+|B|). The default, interpolated method is the same algorithm as scikit-image's
  (bilinear non-maximum suppression, 8-connected hysteresis); it must reach Dice >= 0.98
  (differences are float32-vs-float64 ties). The OpenCV method snaps gradients to 4 directions
  in non-maximum suppression, which moves about one edge pixel in twelve by one pixel: it must
  reach Dice >= 0.9 (the acceptance bar), and nearly all its disagreements must lie within one
  pixel of a scikit-image edge.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi
from skimage import measure
from skimage.feature import canny as sk_canny

from worker.imaging import (
    auto_thresholds,
    canny,
    canny_auto,
    detect_edges,
    edge_indices,
    edge_regions,
    gaussian_filter,
    orientation,
    sobel,
)
from worker.phantoms import Lesion, ct_slice

SIGMA = 1.0


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_sobel_and_magnitude_match_scipy(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> None:
    for name, image in reference_images.items():
        smooth = gaussian_filter(image, SIGMA)
        g = sobel(smooth)
        s64 = smooth.astype(np.float64)
        ref_x = ndi.sobel(s64, axis=1, mode="mirror")
        ref_y = ndi.sobel(s64, axis=0, mode="mirror")
        ref_mag = np.hypot(ref_x, ref_y)
        atol = 1e-5 * float(ref_mag.max())
        for ours, ref in ((g.gx, ref_x), (g.gy, ref_y), (g.magnitude, ref_mag)):
            assert ours.dtype == np.float32
            np.testing.assert_allclose(ours, ref, rtol=0, atol=atol, err_msg=name)


def test_orientation_matches_arctan2_folded_to_half_turn(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> None:
    g = sobel(gaussian_filter(reference_images["CT_small.dcm"], SIGMA))
    ours = orientation(g.gx, g.gy)
    ref = np.degrees(np.arctan2(g.gy.astype(np.float64), g.gx.astype(np.float64))) % 180.0
    assert ours.min() >= 0.0 and ours.max() < 180.0
    diff = np.abs(ours - ref)
    np.testing.assert_array_less(np.minimum(diff, 180.0 - diff), 1e-3)  # 180 and 0 are one angle


def _canny_images(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> dict[str, npt.NDArray[np.float32]]:
    images = dict(reference_images)
    images["ct_phantom_lesion"] = ct_slice(5, 256, Lesion(120.0, 90.0, 8.0, 80.0))
    return images


@pytest.mark.parametrize(("method", "min_dice"), [("interpolated", 0.98), ("opencv", 0.9)])
def test_canny_agrees_with_scikit_image_at_matched_thresholds(
    reference_images: dict[str, npt.NDArray[np.float32]], method: str, min_dice: float
) -> None:
    for name, image in _canny_images(reference_images).items():
        g = sobel(gaussian_filter(image, SIGMA))
        ours, (low, high) = canny_auto(g, method=method)  # type: ignore[arg-type]
        assert 0 < low < high
        ref = sk_canny(
            image.astype(np.float64),
            sigma=SIGMA,
            low_threshold=low,
            high_threshold=high,
            mode="mirror",
        )
        mine = ours > 0
        assert mine.any() and ref.any(), name
        assert _dice(mine, ref) >= min_dice, (name, _dice(mine, ref))
        if method == "opencv":
            near_ref = cv2.dilate(ref.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            assert (mine & ~near_ref).sum() <= 0.05 * mine.sum(), name


def test_edge_map_is_binary_uint8(reference_images: dict[str, npt.NDArray[np.float32]]) -> None:
    g = sobel(gaussian_filter(reference_images["MR_small.dcm"], SIGMA))
    for method in ("interpolated", "opencv"):
        e, _ = canny_auto(g, method=method)  # type: ignore[arg-type]
        assert e.dtype == np.uint8 and set(np.unique(e).tolist()) <= {0, 255}


def test_auto_thresholds_sit_above_noise_and_below_real_steps() -> None:
    rng = np.random.default_rng(11)
    noise = rng.normal(0.0, 12.0, size=(256, 256)).astype(np.float32)
    g = sobel(gaussian_filter(noise, SIGMA))
    edges, (_, high) = canny_auto(g)
    # Pure noise exceeds 4 Rayleigh scales with probability exp(-8): seeds are rare, and the
    # few chains hysteresis grows from them cover well under 1% of the frame.
    assert float((g.magnitude > high).mean()) < 1e-3
    assert float((edges > 0).mean()) < 0.01
    # A 100-unit step (8 noise standard deviations) in the same noise is found along its length.
    stepped = noise.copy()
    stepped[:, 128:] += 100.0
    e, _ = canny_auto(sobel(gaussian_filter(stepped, SIGMA)))
    on_step = (e[8:-8, 126:131] > 0).any(axis=1)
    assert float(on_step.mean()) > 0.95


def test_auto_thresholds_follow_the_units_of_the_data(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> None:
    # The same anatomy in different units (x 1/1000, x 64) must give the same edges.
    image = reference_images["CT_small.dcm"]
    g = sobel(gaussian_filter(image, SIGMA))
    base, (low, high) = canny_auto(g)
    for scale in (2.0**-10, 64.0):
        gs = sobel(gaussian_filter(image * np.float32(scale), SIGMA))
        e, (lo_s, hi_s) = canny_auto(gs)
        assert math.isclose(lo_s, low * scale, rel_tol=1e-5)
        assert math.isclose(hi_s, high * scale, rel_tol=1e-5)
        assert _dice(e > 0, base > 0) >= 0.99


def test_auto_thresholds_floor_handles_noise_free_images(
    shepp_logan: npt.NDArray[np.float32],
) -> None:
    g = sobel(gaussian_filter(shepp_logan, SIGMA))
    assert float(np.median(g.magnitude)) == 0.0  # so the noise term is 0
    low, high = auto_thresholds(g.magnitude)
    assert high == pytest.approx(0.05 * float(np.percentile(g.magnitude, 99.5)), rel=0.05)
    assert low == pytest.approx(0.4 * high)


def test_constant_frames_have_no_edges() -> None:
    g = sobel(np.full((32, 32), 123.0, np.float32))
    for method in ("interpolated", "opencv"):
        e, thresholds = canny_auto(g, method=method)  # type: ignore[arg-type]
        assert not e.any() and thresholds == (0.0, 0.0)


def test_explicit_thresholds_and_unknown_method() -> None:
    img = np.zeros((16, 16), np.float32)
    img[:, 8:] = 100.0
    g = sobel(img)
    assert not canny(g, 1e6, 2e6).any()
    assert canny(g, 10.0, 20.0).any()
    with pytest.raises(ValueError, match="method"):
        canny(g, 10.0, 20.0, "sobel")  # type: ignore[arg-type]


def test_strongest_region_box_matches_scikit_image_labelling(
    reference_images: dict[str, npt.NDArray[np.float32]],
) -> None:
    for name, image in _canny_images(reference_images).items():
        g = sobel(gaussian_filter(image, SIGMA))
        e, _ = canny_auto(g)
        labels = measure.label(e > 0, connectivity=2)
        totals = ndi.sum_labels(
            g.magnitude.astype(np.float64), labels, np.arange(1, labels.max() + 1)
        )
        best = next(r for r in measure.regionprops(labels) if r.label == int(np.argmax(totals)) + 1)
        r0, c0, r1, c1 = best.bbox
        regions = edge_regions(e, g.magnitude)
        assert regions.components == labels.max(), name
        assert regions.bbox == (c0, r0, c1 - c0, r1 - r0), name


@pytest.mark.parametrize("method", ["interpolated", "opencv"])
def test_detect_edges_equals_its_parts(
    reference_images: dict[str, npt.NDArray[np.float32]], method: str
) -> None:
    for name, image in _canny_images(reference_images).items():
        g = sobel(gaussian_filter(image, SIGMA))
        low, high = auto_thresholds(g.magnitude)
        d = detect_edges(g, low, high, method)  # type: ignore[arg-type]
        e = canny(g, low, high, method)  # type: ignore[arg-type]
        np.testing.assert_array_equal(d.edge_map, e, err_msg=name)
        np.testing.assert_array_equal(d.indices, np.flatnonzero(e))
        np.testing.assert_array_equal(edge_indices(e), np.flatnonzero(e))
        assert d.regions == edge_regions(e, g.magnitude), name


def test_no_edges_means_no_region() -> None:
    e = np.zeros((10, 10), np.uint8)
    assert edge_regions(e, np.ones((10, 10), np.float32)) == (0, None)
