"""The shipped models' input domain: phantoms as trained on are inside it, real images are not.

Every frame is checked as the runtime checks it: modality from the instance, rows and columns
from the frame, spacing from PixelSpacing when present, and the frame's feature vector from
``worker.imaging.analyze_frame``.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from worker.dicom import DecodedInstance, decode
from worker.errors import Rejection
from worker.imaging import FEATURE_NAMES, analyze_frame
from worker.inference import list_models
from worker.inference.domain import FrameFacts, InputDomain
from worker.phantoms import Lesion, ct_slice, encode_ct

CARDS = list_models()


def _domains() -> dict[str, InputDomain]:
    out = {}
    for card in CARDS:
        assert card.input_domain is not None, card.name
        out[card.name] = InputDomain.from_card(card.input_domain)
    return out


def _spacing(data: bytes) -> tuple[float, float] | None:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    ps = ds.get("PixelSpacing")
    if ps is None or len(ps) != 2:
        return None
    return float(ps[0]), float(ps[1])


def _facts(inst: DecodedInstance, spacing: tuple[float, float] | None) -> list[FrameFacts]:
    n = inst.frames.shape[0]
    out = []
    for k in sorted({0, n // 2, n - 1}):  # first, middle, last frame: bounded cost
        frame = inst.frames[k]
        features = analyze_frame(frame, inst.meta.modality).features
        rows, cols = frame.shape
        out.append(FrameFacts(inst.meta.modality, rows, cols, spacing, features, FEATURE_NAMES))
    return out


def _real_files() -> list[Path]:
    files = sorted(p for p in (Path(pydicom.__file__).parent / "data").rglob("*") if p.is_file())
    try:
        import data_store  # type: ignore[import-not-found]  # the pydicom-data package
    except ImportError:  # a dev install has it (pyproject's dev extras)
        pass
    else:
        root = Path(data_store.__file__).parent
        files += sorted(p for p in root.rglob("*") if p.is_file())
    return files


def test_every_real_image_is_out_of_domain() -> None:
    domains = _domains()
    checked, reasons = 0, Counter[str]()
    inside = []
    for path in _real_files():
        data = path.read_bytes()
        try:
            with warnings.catch_warnings():  # third-party files: pydicom may warn on them
                warnings.simplefilter("ignore")
                inst = decode(data)
                spacing = _spacing(data)
        except Rejection:
            continue
        for facts in _facts(inst, spacing):
            checked += 1
            for name, domain in domains.items():
                check = domain.check(facts)
                reasons.update(check.reasons)
                if check.in_domain is not False:
                    inside.append((path.name, name, check))
    print(f"{checked} real frames checked; reasons: {dict(reasons)}")
    assert checked >= 100  # pydicom's own test files alone give ~190
    assert inside == []


def test_ct_small_is_out_of_domain_on_its_features() -> None:
    # A real CT of a trained size and a plausible spacing: only what it looks like gives it away.
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    data = path.read_bytes()
    [facts] = _facts(decode(data), _spacing(data))
    assert (facts.modality, facts.rows, facts.columns) == ("CT", 128, 128)
    for domain in _domains().values():
        check = domain.check(facts)
        assert check.in_domain is False and "features" in check.reasons
        assert check.score is not None and check.score > 10


@pytest.mark.parametrize("size", [128, 256, 512])
def test_encoded_phantoms_are_in_domain(size: int) -> None:
    # Through DICOM as the worker receives them (encode_ct writes 0.7 mm and HU).
    for seed in range(4):
        lesion = Lesion(size / 2, size / 3, size * 0.04, 150.0) if seed % 2 else None
        data = encode_ct(ct_slice(1000 + seed, size, lesion=lesion))
        [facts] = _facts(decode(data), _spacing(data))
        for name, domain in _domains().items():
            check = domain.check(facts)
            assert check.in_domain is True, (name, size, seed, check)


def test_shipped_domains_are_declared_and_documented() -> None:
    cnn, svm = (c.input_domain for c in CARDS)
    assert cnn == svm  # one domain: both models learnt from the same phantoms
    assert cnn is not None
    assert cnn["modalities"] == ["CT"] and cnn["rows"] == cnn["columns"] == [128, 512]
    low, high = cnn["pixel_spacing_mm"]
    assert low <= 0.7 <= high
    assert cnn["values"]["units"] == "HU"
    features = cnn["features"]
    assert features["names"] == list(FEATURE_NAMES) and features["coverage"] == 0.995
    assert features["held_out_in_domain"] >= 0.99
    assert min(cnn["held_out_in_domain_by_size"].values()) >= 0.99
    precision = np.array(features["precision"])
    np.testing.assert_array_equal(precision, precision.T)
    assert np.linalg.eigvalsh(precision).min() > 0
    assert "spacing" in cnn["basis"] and "0.7 mm" in cnn["basis"]
