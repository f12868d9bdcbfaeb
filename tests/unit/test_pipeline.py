"""The pure pipeline: findings carry evidence and a pseudonym, never identity; alert rules."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pathlib
import warnings

import numpy as np
import pydicom
import pytest

from worker.contract import ScanEvent, validation_errors
from worker.errors import Rejection
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import Outcome, Pipeline, analyze, build_alerts
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
    settings = Settings(reference_allow=(path.parent.as_uri() + "/",))
    finding = analyze(ScanEvent("r", 0.0, uri=path.as_uri()), models, settings)
    assert "fetch" in finding["timings_ms"]
    with pytest.raises(Rejection) as info:
        analyze(ScanEvent("r", 0.0, uri=(path.parent / "no.dcm").as_uri()), models, settings)
    assert info.value.reason == "fetch_error"


def test_reference_events_are_refused_by_default(models: ModelSet, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "x.dcm"
    path.write_bytes(encode_ct(ct_slice(3, 64)))
    for uri in (path.as_uri(), "http://127.0.0.1:9/x"):
        [outcome] = Pipeline(models, Settings()).process([ScanEvent("r", 0.0, uri=uri)])
        assert outcome.reason == "reference_refused"
        assert (
            outcome.rejection is not None
            and "SCANSTREAM_REFERENCE_ALLOW" in outcome.rejection.detail
        )
    outside = Settings(reference_allow=((path.parent / "elsewhere").as_uri(),))
    [outcome] = Pipeline(models, outside).process([ScanEvent("r", 0.0, uri=path.as_uri())])
    assert outcome.reason == "reference_refused"


def _outcome(models: ModelSet, event: ScanEvent, **kw: object) -> Outcome:
    [outcome] = Pipeline(models, Settings(), **kw).process([event])  # type: ignore[arg-type]
    return outcome


def test_the_time_budget_ends_a_slow_event_as_a_timeout(models: ModelSet) -> None:
    """A clock that jumps past the budget while the third frame waits: dead letter, and the
    remaining frames are never analysed."""
    import numpy as np

    from worker.dicom import DecodedInstance

    now = [0.0]
    frames = np.stack([ct_slice(i, 32) for i in range(6)])
    import worker.pipeline as pipeline

    real_analyze = pipeline.analyze_frame
    calls: list[int] = []

    def slow(frame: object, modality: str, config: object) -> object:
        calls.append(1)
        now[0] += 25.0  # each frame "takes" 25 s of a 60 s budget
        return real_analyze(frame, modality, config)  # type: ignore[arg-type]

    data = encode_ct(ct_slice(1, 32))
    meta = pipeline.decode(data).meta
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "analyze_frame", slow)
        patch.setattr(pipeline, "decode", lambda *_: DecodedInstance(meta, frames))
        outcome = _outcome(models, ScanEvent("e", 0.0, data=data), clock=lambda: now[0])
    assert outcome.reason == "timeout" and "frame 3" in outcome.rejection.detail  # type: ignore[union-attr]
    assert len(calls) == 3


def test_a_reference_that_never_answers_is_bounded_by_the_budget(models: ModelSet) -> None:
    from worker.errors import TransientError

    now = [0.0]
    asked: list[float] = []

    def reader(uri: str, max_bytes: int, timeout_s: float, sha256: str | None) -> bytes:
        asked.append(timeout_s)
        now[0] += timeout_s
        raise TransientError("fetch_error", "deadline")

    settings = Settings(event_timeout_s=15, fetch_timeout_s=10, fetch_attempts=5)
    [outcome] = Pipeline(
        models, settings, reader=reader, clock=lambda: now[0], sleep=lambda s: None
    ).process([ScanEvent("e", 0.0, uri="http://127.0.0.1:9/x")])
    assert outcome.reason in ("timeout", "fetch_error")
    assert asked[0] == 10 and sum(asked) <= 15.0 + 1e-9  # never past the budget


def test_a_tiny_image_and_a_uid_that_is_not_a_uid_are_named(models: ModelSet) -> None:
    import numpy as np
    import pydicom

    tiny = encode_ct(np.zeros((1, 4), np.float32))
    assert _outcome(models, ScanEvent("e", 0.0, data=tiny)).reason == "unsupported_image"
    ds = pydicom.dcmread(__import__("io").BytesIO(encode_ct(ct_slice(1, 32))))
    buffer = __import__("io").BytesIO()
    with warnings.catch_warnings():  # pydicom warns about the invalid UI value it writes
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = "ab" * 32  # seen in pydicom-data: 64 hex digits
        ds.save_as(buffer)
    outcome = _outcome(models, ScanEvent("e", 0.0, data=buffer.getvalue()))
    assert outcome.reason == "integrity_error" and "SOPInstanceUID" in outcome.rejection.detail  # type: ignore[union-attr]


def test_a_finding_that_would_break_its_schema_is_a_dead_letter(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.pipeline as pipeline

    real = pipeline.build_finding

    def broken(*args: object, **kwargs: object) -> dict[str, object]:
        finding = real(*args, **kwargs)  # type: ignore[arg-type]
        finding["patient_name"] = "DOE^JANE"  # additionalProperties: false
        return finding

    monkeypatch.setattr(pipeline, "build_finding", broken)
    outcome = _outcome(models, ScanEvent("e", 0.0, data=encode_ct(ct_slice(1, 32))))
    assert outcome.reason == "contract_violation" and outcome.finding is None


def test_thumbnail_name_comes_from_a_hash_never_from_the_dicom(
    models: ModelSet, tmp_path: pathlib.Path
) -> None:
    folder = tmp_path / "a" / "thumbs"
    settings = Settings(thumbnail_dir=str(folder))
    data = encode_ct(ct_slice(3, 64))
    finding = analyze(ScanEvent("e", 0.0, data=data), models, settings)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.parent for p in written] == [folder]
    assert finding["sop_instance_uid"] not in written[0].name and len(written[0].stem) == 32
    assert finding["edges"]["thumbnail"] == str(written[0])
    # A SOPInstanceUID that is a path never gets this far: the decoder refuses it.
    ds = pydicom.dcmread(io.BytesIO(data))
    buf = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of the invalid UID: that is the point
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = "../../escaped"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(Rejection, match="integrity_error"):
        analyze(ScanEvent("e2", 0.0, data=buf.getvalue()), models, settings)
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_frame_stats_match_numpy() -> None:
    from worker.pipeline import frame_stats

    rng = np.random.default_rng(3)
    frames = rng.normal(40.0, 25.0, (3, 64, 48)).astype(np.float32)
    stats = frame_stats(frames)
    assert stats["min"] == float(frames.min()) and stats["max"] == float(frames.max())
    assert stats["mean"] == pytest.approx(float(frames.mean(dtype=np.float64)), rel=1e-12)
    assert stats["std"] == pytest.approx(float(frames.std(dtype=np.float64)), rel=1e-9)
