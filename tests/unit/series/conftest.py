"""A builder of finding-shaped documents for the series tests (only what a summary reads).

This folder is a package (``__init__.py``) so that this conftest imports as
``series.conftest`` and does not clash with tests/unit/inference/conftest.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

Finding = dict[str, Any]


def build_finding(
    sop: str,
    cnn: float = 0.5,
    in_domain: bool | None = True,
    *,
    study: str = "1.2.3",
    series: str = "1.2.3.4",
    frames: int = 1,
    out_of_domain: int | None = None,
    produced_at: str = "2026-01-01T00:00:00.000Z",
    version: str = "1.0.0",
    threshold: float = 0.5,
) -> Finding:
    """One finding of instance ``sop`` with a cnn classification (and a domain-less svm one)."""
    cnn_cls: dict[str, Any] = {
        "model": "cnn",
        "label": "lesion",
        "probability": cnn,
        "score": 0.0,
        "positive": cnn >= threshold,
        "frame": 0,
        "in_domain": in_domain,
    }
    if out_of_domain is not None:
        cnn_cls["frames_out_of_domain"] = out_of_domain
    svm_cls = {
        "model": "svm",
        "label": "lesion",
        "probability": 0.3,
        "score": -1.0,
        "positive": False,
        "frame": 0,
    }  # no in_domain key at all: an older worker, "undeclared"
    return {
        "schema": "scanstream.finding.v1",
        "finding_id": hashlib.sha256(f"{sop}|{version}".encode()).hexdigest()[:32],
        "study_instance_uid": study,
        "series_instance_uid": series,
        "sop_instance_uid": sop,
        "modality": "CT",
        "frame_count": frames,
        "classifications": [cnn_cls, svm_cls],
        "models": [{"name": "cnn", "version": version}, {"name": "svm", "version": "1.0.0"}],
        "produced_at": produced_at,
    }


@pytest.fixture
def make_finding() -> Callable[..., Finding]:
    return build_finding
