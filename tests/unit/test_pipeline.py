"""The pure pipeline: findings carry evidence and a pseudonym, never identity; alert rules."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from worker.contract import ScanEvent, validation_errors
from worker.errors import Rejection
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import analyze, build_alerts
from worker.settings import AlertRule, Settings


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.load()


def test_finding_has_pseudonym_but_no_patient_identity(models: ModelSet) -> None:
    settings = Settings(pseudonym_key=__import__("worker.settings").settings.Secret("k3y"))
    finding = analyze(
        ScanEvent("e1", 0.0, data=encode_ct(ct_slice(1, 64), study="s1")), models, settings
    )
    text = json.dumps(finding)
    assert "PHANTOM" not in text and "19700101" not in text  # name, ID, birth date
    expected = hmac.new(b"k3y", b"PHANTOM-s1", hashlib.sha256).hexdigest()
    assert finding["patient_key"] == expected
    assert validation_errors("finding.v1", finding) == []
    assert finding["image"]["units"] == "HU"
    assert {m["execution_provider"] for m in finding["models"]} == {models.provider}


def test_replay_gives_the_same_finding_id(models: ModelSet) -> None:
    data = encode_ct(ct_slice(2, 64))
    first = analyze(ScanEvent("a", 0.0, data=data), models, Settings())
    again = analyze(ScanEvent("b", 5.0, data=data), models, Settings())
    assert first["finding_id"] == again["finding_id"]
    assert first["edges"]["features"] == again["edges"]["features"]


def test_alert_rules_by_threshold_and_modality(models: ModelSet) -> None:
    lesion = encode_ct(ct_slice(8, 128, Lesion(60, 64, 6, 150)))
    rules = (AlertRule("lesion", 0.5, "CT", "critical"), AlertRule("lesion", 0.5, "MR"))
    settings = Settings(alert_rules=rules)
    finding = analyze(ScanEvent("e", 0.0, data=lesion), models, settings)
    assert max(c["probability"] for c in finding["classifications"]) >= 0.5
    alerts = build_alerts(finding, settings)
    assert [a["severity"] for a in alerts] == ["critical"]  # the MR rule does not apply
    assert validation_errors("alert.v1", alerts[0]) == []
    assert alerts[0]["alert_id"] == build_alerts(finding, settings)[0]["alert_id"]
    assert build_alerts(finding, Settings(alert_rules=(AlertRule("nodule", 0.1),))) == []
    normal = analyze(ScanEvent("n", 0.0, data=encode_ct(ct_slice(7, 128))), models, settings)
    top = max(c["probability"] for c in normal["classifications"])
    assert build_alerts(normal, Settings(alert_rules=(AlertRule("lesion", top + 1e-6),))) == []


def test_reference_event_is_fetched(models: ModelSet, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "x.dcm"
    path.write_bytes(encode_ct(ct_slice(3, 64)))
    finding = analyze(ScanEvent("r", 0.0, uri=path.as_uri()), models, Settings())
    assert "fetch" in finding["timings_ms"]
    with pytest.raises(Rejection) as info:
        analyze(ScanEvent("r", 0.0, uri=(path.parent / "no.dcm").as_uri()), models, Settings())
    assert info.value.reason == "fetch_error"
