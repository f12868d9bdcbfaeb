"""The shipped models' declared input domain, through the pipeline as the worker runs it: real
images (pydicom's test files and pydicom-data) are out of domain and raise no alert with the
default rules; held-out phantoms are in domain; the reasons name what is wrong."""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.phantoms import ct_slice, encode_ct, random_lesion
from worker.pipeline import Outcome, Pipeline
from worker.settings import Settings

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
NOT_DICOM = (".py", ".pyc", ".json", ".txt", ".md", ".gz", ".bz2", ".xz", ".zip", ".npy")


def pydicom_data_dir() -> Path | None:
    try:
        import data_store  # the pydicom-data distribution's package
    except ImportError:
        return None
    return Path(data_store.__file__).parent / "data"


def real_files() -> Iterator[Path]:
    roots = [PYDICOM_FILES]
    extra = pydicom_data_dir()
    if extra is None:
        if os.environ.get("CI"):
            pytest.fail("pydicom-data is missing on CI: it is a dev dependency (pyproject.toml)")
    else:
        roots.append(extra)
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.lower().endswith(NOT_DICOM):
                yield path


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    models = ModelSet.load()
    assert all(card.input_domain for card in models.cards), "the shipped cards declare a domain"
    return Pipeline(models, Settings())


def run(pipeline: Pipeline, blobs: list[bytes]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for start in range(0, len(blobs), 16):  # a poll's worth at a time, as the worker does
        chunk = blobs[start : start + 16]
        outcomes += pipeline.process(
            [ScanEvent(f"e{start + i}", 0.0, data=b) for i, b in enumerate(chunk)]
        )
    return outcomes


def test_every_real_image_is_out_of_domain_and_raises_no_alert(pipeline: Pipeline) -> None:
    paths = list(real_files())
    outcomes = run(pipeline, [p.read_bytes() for p in paths])
    findings = [(p, o) for p, o in zip(paths, outcomes, strict=True) if o.finding is not None]
    reasons: Counter[str] = Counter()
    for path, outcome in findings:
        assert outcome.finding is not None
        for c in outcome.finding["classifications"]:
            assert c["in_domain"] is False, (path.name, c)
            reasons.update(c["domain_reasons"])
        assert outcome.alerts == (), path.name  # lesion>=0.9@CT, the default rule
    print(f"{len(paths)} files, {len(findings)} findings, reasons {dict(reasons)}")
    assert len(findings) >= 60  # enough real images were decoded for this to mean something


def test_held_out_phantoms_are_in_domain(pipeline: Pipeline) -> None:
    blobs = []
    for size, count in ((128, 100), (256, 50), (512, 50)):
        for i in range(count):
            seed = 900_000 + size * 1000 + i  # far from every training seed stream
            lesion = random_lesion(np.random.default_rng(seed), size) if i % 2 else None
            blobs.append(
                encode_ct(ct_slice(seed, size, lesion=lesion), study=f"held-{seed}", instance=i + 1)
            )
    outcomes = run(pipeline, blobs)
    checks = [c["in_domain"] for o in outcomes if o.finding for c in o.finding["classifications"]]
    assert len(checks) == 2 * len(blobs)
    share = sum(checks) / len(checks)
    print(f"held-out phantoms in domain: {share:.4f} of {len(checks)} classifications")
    assert share >= 0.99


def _recoded(data: bytes, **changes: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for name, value in changes.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_reasons_name_what_is_wrong(pipeline: Pipeline) -> None:
    good = encode_ct(ct_slice(424242, 256))
    hot = ct_slice(424243, 256) + 2500.0  # every value far above what the models saw
    cases = {
        "modality": _recoded(good, Modality="MR"),
        "size": encode_ct(ct_slice(424244, 64)),
        "values": encode_ct(hot),
        "spacing": _recoded(good, PixelSpacing=[3.0, 3.0]),
    }
    outcomes = run(pipeline, list(cases.values()))
    for (reason, _), outcome in zip(cases.items(), outcomes, strict=True):
        assert outcome.finding is not None, reason
        for c in outcome.finding["classifications"]:
            assert c["in_domain"] is False and reason in c["domain_reasons"], (reason, c)
    [control] = run(pipeline, [good])
    assert control.finding is not None
    assert all(c["in_domain"] for c in control.finding["classifications"])
