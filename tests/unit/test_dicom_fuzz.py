"""Fuzzing the decode path: 10,000 mutated DICOM inputs, no unhandled exception.

Every input must either decode or raise Rejection with a contract reason; anything else
(IndexError, struct.error, MemoryError, ...) is a bug, because the worker would have to fall back
to internal_error for an input problem.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.dicom import Limits, decode
from worker.errors import REASONS, Rejection

_BASE = Path(pydicom.__file__).parent / "data" / "test_files"
SEEDS = [
    (_BASE / name).read_bytes()
    for name in (
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_small_odd_jpeg.dcm",
        "rtdose_1frame.dcm",
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    )
]
LIMITS = Limits(max_bytes=1 << 20, max_pixels=1 << 20, max_frames=64)

mutation = st.tuples(st.integers(min_value=0, max_value=1 << 20), st.integers(0, 255))


@settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    flips=st.lists(mutation, min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 16)),
)
def test_mutated_dicom_never_escapes_as_an_unhandled_exception(
    seed: int, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(SEEDS[seed])
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        inst = decode(bytes(data), LIMITS)
    except Rejection as exc:
        assert exc.reason in REASONS
    else:
        assert inst.frames.ndim == 3 and inst.frames.shape[0] >= 1
