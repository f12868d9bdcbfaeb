from __future__ import annotations

import pytest

from worker.errors import REASONS, Rejection, ScanStreamError


def test_reason_codes_are_the_contract() -> None:
    assert set(REASONS) == {
        "not_dicom",
        "truncated",
        "no_pixel_data",
        "unsupported_transfer_syntax",
        "decode_error",
        "integrity_error",
        "too_large",
        "schema_error",
        "fetch_error",
        "reference_refused",
        "unsupported_image",
        "timeout",
        "result_refused",
        "contract_violation",
        "export_rejected",
        "export_failed",
        "internal_error",
    }


def test_rejection_keeps_detail_short_and_single_line() -> None:
    err = Rejection("decode_error", "line one\nline two " + "x" * 1000)
    assert isinstance(err, ScanStreamError)
    assert "\n" not in err.detail and len(err.detail) == 500


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        Rejection("oops", "x")  # type: ignore[arg-type]
