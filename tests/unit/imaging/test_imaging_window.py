"""Windowing: named HU windows for CT, percentile windows for other modalities, overrides.

Percentile windows are computed on a strided subsample (worker.imaging.stats); against
``np.percentile`` of the whole frame they must agree within 2 percentile ranks, i.e. the
window edges must lie between the full-frame percentiles p-2 and p+2.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from worker.imaging import (
    CT_WINDOWS,
    MODALITY_PERCENTILES,
    default_window,
    percentile_window,
    window,
)


def test_window_is_the_linear_ramp_clipped_to_unit_interval() -> None:
    hu = np.linspace(-1200.0, 1200.0, 97, dtype=np.float32).reshape(1, -1)
    out = window(hu, 40.0, 400.0)
    ref = np.clip((hu.astype(np.float64) - (40.0 - 200.0)) / 400.0, 0.0, 1.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_ct_uses_named_hu_windows(
    dicom_slices: dict[str, tuple[str, npt.NDArray[np.float32]]],
) -> None:
    _, ct = dicom_slices["CT_small.dcm"]
    assert default_window(ct, "CT") == CT_WINDOWS["soft_tissue"] == (40.0, 400.0)
    assert default_window(ct, "ct", ct_window="lung") == (-600.0, 1500.0)
    assert default_window(ct, "CT", ct_window="bone") == (400.0, 1800.0)
    with pytest.raises(ValueError, match="unknown CT window"):
        default_window(ct, "CT", ct_window="elbow")


def test_other_modalities_use_percentiles_of_the_frame(
    dicom_slices: dict[str, tuple[str, npt.NDArray[np.float32]]],
) -> None:
    for name, (modality, frame) in dicom_slices.items():
        if modality == "CT":
            continue
        lo_p, hi_p = MODALITY_PERCENTILES[modality]
        center, width = default_window(frame, modality)
        lo, hi = center - width / 2, center + width / 2
        bounds = np.percentile(frame, [max(lo_p - 2, 0), lo_p + 2, hi_p - 2, min(hi_p + 2, 100)])
        assert bounds[0] <= lo <= bounds[1], name
        assert bounds[2] <= hi <= bounds[3], name


def test_unknown_modalities_default_to_1_99_and_overrides_win() -> None:
    frame = np.arange(4096, dtype=np.float32).reshape(64, 64)  # small: no subsampling
    center, width = default_window(frame, "XA")
    expected = np.percentile(frame, [1.0, 99.0])
    assert (center - width / 2, center + width / 2) == pytest.approx(tuple(expected), abs=1.0)
    assert default_window(frame, "XA", percentiles=(0.0, 100.0)) == (2047.5, 4095.0)
    assert default_window(frame, "CT", override=(10.0, 20.0)) == (10.0, 20.0)


def test_degenerate_frames_still_get_a_positive_width() -> None:
    flat = np.full((20, 20), 7.0, np.float32)
    assert percentile_window(flat, 1.0, 99.0) == (7.0, 1.0)
    spot = flat.copy()
    spot[3, 3] = 100.0  # percentiles coincide; fall back to min..max
    assert percentile_window(spot, 1.0, 99.0) == (53.5, 93.0)
    out = window(flat, *percentile_window(flat, 1.0, 99.0))
    assert bool(((out >= 0) & (out <= 1)).all())
    with pytest.raises(ValueError, match="width"):
        window(flat, 0.0, 0.0)


def test_window_does_not_modify_its_input() -> None:
    frame = np.random.default_rng(1).normal(size=(50, 50)).astype(np.float32)
    before = frame.copy()
    window(frame, *default_window(frame, "MR"))
    np.testing.assert_array_equal(frame, before)
