"""Out-of-domain classifications are counted once committed, per model and reason, and raise
no alert; an in-domain positive phantom carries its saliency box and alerts."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from tests.unit.runtime.test_loop import make_worker, models, record
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct

__all__ = ["models"]


def test_a_real_ct_is_counted_out_of_domain_and_pages_no_one(models: ModelSet) -> None:
    real = (Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm").read_bytes()
    worker, _, producer, _ = make_worker(models, [[record(0, real)]])
    worker.run(drain=True)
    [finding] = [json.loads(s.value or b"") for s in producer.acked("scans.findings")]
    assert all(c["in_domain"] is False for c in finding["classifications"])
    assert not producer.acked("scans.alerts")
    text = worker.metrics.render()
    for model in ("lesion-cnn", "lesion-svm"):
        assert f'scanstream_out_of_domain_total{{model="{model}",reason="features"}} 1.0' in (
            text.decode()
        )


def test_an_in_domain_positive_phantom_alerts_with_its_saliency_box(models: ModelSet) -> None:
    lesion = Lesion(132.0, 127.0, 11.4, 195.0)  # clear: the shipped CNN calls it positive
    worker, _, producer, _ = make_worker(
        models, [[record(0, encode_ct(ct_slice(52, 256, lesion=lesion)))]]
    )
    worker.run(drain=True)
    [finding] = [json.loads(s.value or b"") for s in producer.acked("scans.findings")]
    [cnn] = [c for c in finding["classifications"] if c["model"] == "lesion-cnn"]
    assert cnn["in_domain"] is True and cnn["positive"], cnn
    box = cnn["saliency"]["bbox"]
    assert box["x"] <= lesion.col <= box["x"] + box["width"]
    assert box["y"] <= lesion.row <= box["y"] + box["height"]
    assert "saliency" in finding["timings_ms"]
    assert len(producer.acked("scans.alerts")) == 1
