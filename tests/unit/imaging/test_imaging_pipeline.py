"""analyze_frame's contract: shapes, dtypes, evidence, configuration, robustness; thumbnails."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker.errors import ConfigError
from worker.imaging import (
    FEATURE_NAMES,
    FrameAnalysis,
    ImagingConfig,
    analyze_frame,
    edge_thumbnail,
    write_thumbnail,
)
from worker.phantoms import Lesion, ct_slice


def _check_contract(a: FrameAnalysis, shape: tuple[int, ...]) -> None:
    assert a.features.dtype == np.float32 and a.features.shape == (len(FEATURE_NAMES),)
    assert bool(np.isfinite(a.features).all())
    assert a.windowed.dtype == np.float32 and a.windowed.shape == shape
    assert float(a.windowed.min()) >= 0.0 and float(a.windowed.max()) <= 1.0
    assert a.edge_map.dtype == np.uint8 and a.edge_map.shape == shape
    assert set(np.unique(a.edge_map).tolist()) <= {0, 255}
    assert list(a.named_features()) == list(FEATURE_NAMES)
    assert list(a.named_features().values()) == a.features.tolist()
    assert set(a.timings_ms) == {"filter", "edges", "features"}
    assert all(v >= 0.0 for v in a.timings_ms.values())
    low, high = a.canny_thresholds
    assert 0.0 <= low <= high
    if a.edge_bbox is None:
        assert not a.edge_map.any()
    else:
        x, y, w, h = a.edge_bbox
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= shape[1] and y + h <= shape[0]
        assert a.edge_map[y : y + h, x : x + w].any()


def test_ct_slice_with_lesion(tmp_path: Path) -> None:
    hu = ct_slice(4, 256, Lesion(128.0, 80.0, 10.0, 150.0))
    a = analyze_frame(hu, "CT")
    _check_contract(a, hu.shape)
    assert a.edge_bbox is not None
    # The soft-tissue window: air is black, soft tissue mid-grey.
    assert float(a.windowed[0, 0]) == 0.0 and 0.3 < float(np.median(a.windowed[128, 100:156])) < 0.7


def test_real_dicom_slices(dicom_slices: dict[str, tuple[str, npt.NDArray[np.float32]]]) -> None:
    for modality, frame in dicom_slices.values():
        _check_contract(analyze_frame(frame, modality), frame.shape)


@pytest.mark.parametrize(
    "config",
    [
        ImagingConfig(denoise="median", median_ksize=3),
        ImagingConfig(denoise="median", median_ksize=7),
        ImagingConfig(denoise="mean", mean_ksize=5),
        ImagingConfig(denoise="none"),
        ImagingConfig(gaussian_sigma=2.0, gaussian_ksize=7),
        ImagingConfig(canny_method="opencv"),
        ImagingConfig(canny_thresholds=(50.0, 150.0)),
        ImagingConfig(window=(0.0, 100.0), percentiles=(5.0, 95.0), ct_window="lung"),
    ],
)
def test_every_configuration_runs(
    dicom_slices: dict[str, tuple[str, npt.NDArray[np.float32]]], config: ImagingConfig
) -> None:
    for modality, frame in dicom_slices.values():
        _check_contract(analyze_frame(frame[:128, :128], modality, config), frame[:128, :128].shape)


def test_explicit_thresholds_are_reported() -> None:
    a = analyze_frame(ct_slice(1, 64), "CT", ImagingConfig(canny_thresholds=(50.0, 150.0)))
    assert a.canny_thresholds == (50.0, 150.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"denoise": "bilateral"}, "denoise"),
        ({"median_ksize": 4}, "median_ksize"),
        ({"gaussian_sigma": 0.0}, "sigma"),
        ({"gaussian_ksize": 6}, "gaussian_ksize"),
        ({"ct_window": "elbow"}, "ct_window"),
        ({"window": (0.0, -1.0)}, "window"),
        ({"percentiles": (99.0, 1.0)}, "percentiles"),
        ({"canny_method": "sobel"}, "canny_method"),
        ({"canny_low_ratio": 1.5}, "canny_low_ratio"),
        ({"canny_thresholds": (10.0, 5.0)}, "canny_thresholds"),
        ({"thumbnail_size": 2}, "thumbnail_size"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ImagingConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((2, 2), np.float32),
        np.array([[0.0, 1.0], [2.0, 3.0]], np.float32),
        np.arange(18, dtype=np.float32).reshape(2, 9),
        np.full((64, 64), -1000.0, np.float32),
        np.random.default_rng(0).integers(0, 4096, (33, 17)).astype(np.uint16),
        np.random.default_rng(1).normal(size=(40, 40)),  # float64
        ct_slice(2, 128)[::2, 1::3],  # a non-contiguous view
        np.eye(1100, 700, dtype=np.float32) * 3000.0,
    ],
    ids=["zeros", "2x2", "2x9", "constant", "uint16", "float64", "strided", "1100x700"],
)
def test_awkward_frames(frame: npt.NDArray[np.float32]) -> None:
    before = np.array(frame, copy=True)
    _check_contract(analyze_frame(frame, "OT"), frame.shape)
    np.testing.assert_array_equal(frame, before)  # the caller's frame is left alone


@pytest.mark.parametrize("magnitude", [1e-44, 1e-30, 1.0, 1e30, 3e38])
def test_extreme_but_finite_values(magnitude: float) -> None:
    frame = np.full((24, 24), magnitude, np.float32)
    frame[6:14, 6:14] = -magnitude
    a = analyze_frame(frame, "MR")
    _check_contract(a, frame.shape)
    assert a.edge_bbox is not None
    ref = analyze_frame(np.sign(frame), "MR")
    assert a.edge_bbox == ref.edge_bbox
    np.testing.assert_array_equal(a.edge_map, ref.edge_map)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros(16, np.float32),
        np.zeros((1, 16), np.float32),
        np.zeros((2, 2, 3), np.float32),
        np.array([[0.0, np.nan], [1.0, 2.0]], np.float32),
        np.array([[0.0, np.inf], [1.0, 2.0]], np.float32),
    ],
    ids=["1-D", "one-row", "3-D", "nan", "inf"],
)
def test_rejects_what_is_not_a_finite_frame(frame: npt.NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"2-D|2x2|NaN"):
        analyze_frame(frame, "CT")


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=48),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    st.sampled_from(["CT", "MR", "US", "XA"]),
    st.sampled_from(
        [
            ImagingConfig(),
            ImagingConfig(denoise="median", median_ksize=7),
            ImagingConfig(denoise="mean", canny_method="opencv"),
            ImagingConfig(canny_thresholds=(1e-40, 1e38)),
        ]
    ),
)
def test_any_finite_frame_gets_an_answer(
    frame: npt.NDArray[np.float32], modality: str, config: ImagingConfig
) -> None:
    # Every finite float32, subnormals and the float32 maximum included.
    _check_contract(analyze_frame(frame, modality, config), frame.shape)


def test_thumbnail_is_a_small_png_that_keeps_thin_edges(tmp_path: Path) -> None:
    edges = analyze_frame(ct_slice(6, 512), "CT").edge_map
    target = tmp_path / "evidence" / "slice.png"
    write_thumbnail(edges, target, size=128)
    image = cv2.imdecode(np.frombuffer(target.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (128, 128) and image.dtype == np.uint8
    assert set(np.unique(image).tolist()) == {0, 255}
    np.testing.assert_array_equal(image, edge_thumbnail(edges, 128))
    # Every edge pixel lands in a lit thumbnail cell (4x4 pixels per cell here).
    ys, xs = np.nonzero(edges)
    assert bool((image[ys // 4, xs // 4] == 255).all())
    assert os.listdir(target.parent) == ["slice.png"]  # no temporary file left behind


def test_thumbnail_keeps_aspect_and_never_enlarges() -> None:
    wide = np.zeros((100, 400), np.uint8)
    wide[50, :] = 255
    assert edge_thumbnail(wide, 128).shape == (32, 128)
    assert edge_thumbnail(wide[:20, :30], 128).shape == (20, 30)
    with pytest.raises(ValueError):
        edge_thumbnail(wide, 0)
