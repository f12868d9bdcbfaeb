"""The DICOM SR of a finding: valid (dciodvfy), readable back, same patient/study, deterministic."""

from __future__ import annotations

import pathlib
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from tooling import dciodvfy_errors

from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.inference.cards import list_models
from worker.pipeline import analyze
from worker.settings import Settings
from worker.sr import DEMONSTRATION_TEXT, build_sr, is_demonstration


@pytest.fixture(scope="module")
def source_path() -> pathlib.Path:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    return pathlib.Path(path)


@pytest.fixture(scope="module")
def source(source_path: pathlib.Path) -> pydicom.Dataset:
    return pydicom.dcmread(source_path)


@pytest.fixture(scope="module")
def finding(source_path: pathlib.Path) -> dict[str, Any]:
    event = ScanEvent("sr-test", 0.0, data=source_path.read_bytes())
    return analyze(event, ModelSet.load(), Settings())


@pytest.fixture(scope="module")
def sr_file(
    source: pydicom.Dataset, finding: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    notes = [c.intended_use for c in list_models()]
    path = tmp_path_factory.mktemp("sr") / "finding.dcm"
    build_sr(source, finding, notes).save_as(path, enforce_file_format=True)
    return path


def _report(path: pathlib.Path) -> hd.sr.MeasurementReport:
    """The SR at ``path`` read back by highdicom, as its TID 1500 measurement report."""
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr.content


def _texts(items: Any, name: hd.sr.CodedConcept) -> list[str]:
    """TEXT values named ``name`` anywhere under ``items`` (a content sequence)."""
    out: list[str] = []
    for item in items:
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == name.value:
            out.append(str(item.TextValue))
        out.extend(_texts(item.get("ContentSequence", []), name))
    return out


def test_dciodvfy_finds_no_error(sr_file: pathlib.Path) -> None:
    errors, output = dciodvfy_errors(sr_file)
    assert errors == [], output


def test_classifications_read_back(sr_file: pathlib.Path, finding: dict[str, Any]) -> None:
    groups = _report(sr_file).get_image_measurement_groups()
    got = {}
    for group in groups:
        (evaluation,) = group.get_qualitative_evaluations()
        assert evaluation.name == codes.SCT.Lesion
        (measurement,) = group.get_measurements(name=codes.DCM.Probability)
        assert measurement.unit.value == "{probability}"
        # The group names its algorithm, and so does its measurement: the same one.
        (model,) = set(_texts(group, hd.sr.CodedConcept.from_code(codes.DCM.AlgorithmName)))
        (version,) = set(_texts(group, hd.sr.CodedConcept.from_code(codes.DCM.AlgorithmVersion)))
        got[model] = (version, evaluation.value == codes.SCT.Present, measurement.value)
    versions = {m["name"]: m["version"] for m in finding["models"]}
    expected: dict[str, tuple[str, bool, Any]] = {
        c["model"]: (versions[c["model"]], c["positive"], pytest.approx(c["probability"]))
        for c in finding["classifications"]
    }
    assert got == expected
    assert {True, False} == {positive for _, positive, _ in got.values()}  # both codes exercised


def test_region_observer_and_evidence(
    sr_file: pathlib.Path, source: pydicom.Dataset, finding: dict[str, Any]
) -> None:
    report = _report(sr_file)
    (edge,) = report.get_planar_roi_measurement_groups()
    assert edge.finding_type == codes.SCT.Edge
    roi = edge.roi
    assert roi is not None and roi.value_type == hd.sr.ValueTypeValues.SCOORD
    assert roi.GraphicType == "POLYLINE"
    b = finding["edges"]["strongest_edge_bbox"]
    x0, y0, x1, y1 = b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]
    assert [float(v) for v in roi.GraphicData] == [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]
    (image,) = roi.ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    (observer,) = report.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    assert observer.observer_identifying_attributes.name == "ScanStream"
    sr = pydicom.dcmread(sr_file)
    assert sr.Manufacturer == "ScanStream"
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [source.SOPInstanceUID]


def test_patient_study_series_and_determinism(
    sr_file: pathlib.Path, source: pydicom.Dataset, finding: dict[str, Any]
) -> None:
    sr = pydicom.dcmread(sr_file)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.InstanceNumber == 1
    again = build_sr(source, finding)
    assert again == build_sr(source, finding)  # pure: element for element
    assert again.SOPInstanceUID == sr.SOPInstanceUID
    assert again.TimezoneOffsetFromUTC == "+0000"
    day = finding["produced_at"][:10].replace("-", "")  # the finding's time, not the clock's
    assert str(again.ContentDate) == str(again.InstanceCreationDate) == day
    assert again.SeriesInstanceUID == sr.SeriesInstanceUID
    other = build_sr(source, {**finding, "finding_id": "0" * 32})
    assert other.SOPInstanceUID != sr.SOPInstanceUID
    assert other.SeriesInstanceUID == sr.SeriesInstanceUID  # one SR series per source series


def test_demonstration_text(
    sr_file: pathlib.Path, source: pydicom.Dataset, finding: dict[str, Any]
) -> None:
    comment = hd.sr.CodedConcept("121106", "DCM", "Comment")
    sr = pydicom.dcmread(sr_file)
    assert _texts(sr.ContentSequence, comment) == [DEMONSTRATION_TEXT]
    assert is_demonstration(c.intended_use for c in list_models())
    validated = build_sr(source, finding, ["Cleared for clinical use."])
    assert _texts(validated.ContentSequence, comment) == []
