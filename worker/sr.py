"""One finding as a DICOM Structured Report: a TID 1500 measurement report (Comprehensive 3D SR).

:func:`build_sr` is pure: it reads nothing and writes nothing, and the same source instance,
finding and card notes give the same dataset, element for element (its dates and times are
the finding's ``produced_at``, in UTC). What the report holds:

* the observer: a device, "ScanStream" (TID 1004), with a fixed UID;
* one measurement group (TID 1501) per classification in ``finding["classifications"]``: the
  algorithm (model name and version from ``finding["models"]``), a qualitative evaluation
  "Lesion" = "Present" or "Absent" (SNOMED CT) from the classification's ``positive``, and its
  probability as a numeric measurement (DCM 122157 "Probability", UCUM ``{probability}``);
* the strongest-edge region ``finding["edges"]["strongest_edge_bbox"]`` as a planar ROI group
  (TID 1410) whose SCOORD POLYLINE rectangle references the source image;
* the source instance as evidence: the SR has its patient and study, its own series;
* a TEXT "demonstration model, not clinically validated" when a card's note says so.

>>> sop_instance_uid_for("0" * 32) == sop_instance_uid_for("0" * 32)
True
"""

from __future__ import annotations

import datetime
import io
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from worker.errors import ScanStreamError
from worker.inference.cards import DEMO_NOTICE

MANUFACTURER: Final = "ScanStream"
DEMONSTRATION_TEXT: Final = "demonstration model, not clinically validated"
SR_SERIES_NUMBER: Final = 9001
SR_SERIES_DESCRIPTION: Final = "ScanStream findings (SR)"
_UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:scanstream:sr")


def derived_uid(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 B.2, root ``2.25``) from a name-based UUID of ``parts``.

    (pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources: it is random.)

    >>> derived_uid("a", "b") == derived_uid("a", "b") != derived_uid("a", "c")
    True
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


DEVICE_UID: Final = derived_uid("device", MANUFACTURER)
PROBABILITY_UNIT: Final = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
# TID 1500 row 12: the report-level "Qualitative Evaluations" container (CODE or TEXT items).
QUALITATIVE_EVALUATIONS: Final = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT: Final = hd.sr.CodedConcept("121106", "DCM", "Comment")


def sop_instance_uid_for(finding_id: str) -> str:
    """The SR's SOP Instance UID: a ``2.25`` UID derived from the finding ID alone."""
    return derived_uid("sr", finding_id)


def series_instance_uid_for(source: pydicom.Dataset) -> str:
    """The SR series: one per source series, derived from its study and series UIDs."""
    return derived_uid("series", str(source.StudyInstanceUID), str(source.SeriesInstanceUID))


def is_demonstration(card_notes: Iterable[str]) -> bool:
    """Whether any card note (a card's ``intended_use``) says the model is not validated."""
    return any("not clinically validated" in note.casefold() for note in card_notes)


def _content_datetime(finding: Mapping[str, Any]) -> datetime.datetime | None:
    produced = finding.get("produced_at")
    if not isinstance(produced, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(produced.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(datetime.UTC) if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _frame_numbers(source: pydicom.Dataset, frame: Any) -> list[int] | None:
    """Referenced Frame Number(s) (1-based) for a multi-frame source, else ``None``."""
    if int(source.get("NumberOfFrames", 1) or 1) > 1 and isinstance(frame, int):
        return [frame + 1]
    return None


def _procedure(source: pydicom.Dataset) -> hd.sr.CodedConcept:
    if source.get("Modality") == "CT":
        return hd.sr.CodedConcept.from_code(codes.LN.CTUnspecifiedBodyRegion)
    return hd.sr.CodedConcept.from_code(codes.SCT.ImagingProcedure)


def _classification_group(
    source: pydicom.Dataset,
    finding_id: str,
    classification: Mapping[str, Any],
    versions: Mapping[str, str],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    model = str(classification["model"])
    algorithm = hd.sr.AlgorithmIdentification(
        name=model, version=versions.get(model, "unknown"), manufacturer=MANUFACTURER
    )
    present = codes.SCT.Present if classification["positive"] else codes.SCT.Absent
    frames = _frame_numbers(source, classification.get("frame"))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("group", finding_id, model),
            identifier=f"{model} classification",
        ),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Lesion, present)],
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=float(classification["probability"]),
                unit=PROBABILITY_UNIT,
                algorithm_id=algorithm,
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source, frames)],
    )


def _edge_group(
    source: pydicom.Dataset, finding_id: str, bbox: Mapping[str, Any]
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    # Image coordinates: (0, 0) is the top left corner of the top left pixel, so a box of
    # pixels [x, x + width) x [y, y + height) spans the corners below (closed polyline).
    x0, y0 = float(bbox["x"]), float(bbox["y"])
    x1, y1 = x0 + float(bbox["width"]), y0 + float(bbox["height"])
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
    frames = _frame_numbers(source, bbox.get("frame"))
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion.from_source_image(source, frames),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("edge", finding_id),
            identifier="strongest edge",
        ),
        referenced_region=region,
        finding_type=codes.SCT.Edge,
        method=codes.DCM.EdgeDetection,
    )


# Type 2 attributes highdicom copies from the evidence: present in the SR even when empty.
_STUDY_TYPE2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


class SRError(ScanStreamError, ValueError):
    """The source instance lacks what an SR must reference (its study, series or SOP UIDs)."""


def _evidence(source: pydicom.Dataset) -> pydicom.Dataset:
    """``source`` with the patient and study attributes an SR copies, empty where absent (a
    scanner may leave Type 2 attributes out); pixel data is not copied."""
    missing = [name for name in _REQUIRED if not source.get(name)]
    if missing:
        raise SRError(f"the source instance has no {', '.join(missing)}")
    evidence = pydicom.Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # everything but the pixel data
            evidence.add(element)
    for name in _STUDY_TYPE2:
        if name not in evidence:
            setattr(evidence, name, None)
    return evidence


def sr_part10(
    data: bytes, finding: Mapping[str, Any], card_notes: Sequence[str] = (DEMO_NOTICE,)
) -> bytes:
    """The SR of ``finding`` as a DICOM Part 10 file, from the source instance's bytes.

    >>> from worker.contract import ScanEvent
    >>> from worker.inference import ModelSet
    >>> from worker.phantoms import ct_slice, encode_ct
    >>> from worker.pipeline import analyze
    >>> from worker.settings import Settings
    >>> data = encode_ct(ct_slice(1, 64))
    >>> finding = analyze(ScanEvent("e1", 0.0, data=data), ModelSet.load(), Settings())
    >>> sr = pydicom.dcmread(io.BytesIO(sr_part10(data, finding)))
    >>> sr.Modality, sr.SOPInstanceUID == sop_instance_uid_for(finding["finding_id"])
    ('SR', True)
    """
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    out = io.BytesIO()
    build_sr(source, finding, card_notes).save_as(out, enforce_file_format=True)
    return out.getvalue()


def report_of(
    data: bytes, finding: Mapping[str, Any], card_notes: Sequence[str]
) -> tuple[bytes | None, str | None, float]:
    """(SR bytes or None, why there is none, milliseconds spent): never raises, so that an SR
    that cannot be built does not hold its finding back (the caller logs and counts why)."""
    t0 = time.perf_counter()
    try:
        return sr_part10(data, finding, card_notes), None, (time.perf_counter() - t0) * 1e3
    except SRError as exc:  # names missing attributes, never their values
        why = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - highdicom or pydicom refusing what it holds
        # Only the type: such a message may quote an attribute's value, a patient's name.
        why = f"{type(exc).__name__} while building it (message withheld: it may quote PHI)"
    return None, why[:300], (time.perf_counter() - t0) * 1e3


def build_sr(
    source: pydicom.Dataset,
    finding: Mapping[str, Any],
    card_notes: Sequence[str] = (DEMO_NOTICE,),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``finding``, the analysis of the instance ``source``.

    ``source`` needs its identifying attributes (patient, study, series, SOP); pixel data is
    not used; Type 2 patient and study attributes it lacks are left empty in the SR, and
    :class:`SRError` says which UIDs are missing when it cannot reference it. ``card_notes``
    are the ``intended_use`` of the cards of the models behind the
    finding (:attr:`worker.inference.cards.ModelCard.intended_use`); the report carries
    :data:`DEMONSTRATION_TEXT` when any says "not clinically validated".
    """
    source = _evidence(source)
    finding_id = str(finding["finding_id"])
    versions = {str(m["name"]): str(m["version"]) for m in finding.get("models", [])}
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [
        _classification_group(source, finding_id, c, versions)
        for c in finding.get("classifications", [])
    ]
    bbox = (finding.get("edges") or {}).get("strongest_edge_bbox")
    if bbox and bbox.get("width") and bbox.get("height"):
        groups.append(_edge_group(source, finding_id, bbox))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=", ".join(f"{n} {v}" for n, v in sorted(versions.items())) or None,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(source),
        imaging_measurements=groups,
    )
    if is_demonstration(card_notes):
        notes = hd.sr.ContainerContentItem(
            name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        notes.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=COMMENT,
                    value=DEMONSTRATION_TEXT,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            ]
        )
        report[0].ContentSequence.append(notes)

    when = _content_datetime(finding)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_instance_uid_for(source),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid_for(finding_id),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        content_date=None if when is None else when.date(),
        content_time=None if when is None else when.time().replace(tzinfo=None),
    )
    if when is not None:
        # highdicom stamps Instance Creation and its own Contributing Equipment item with the
        # local clock; the finding's own time (UTC) keeps the SR a function of its inputs, and
        # the offset says which clock that is.
        sr.InstanceCreationDate = sr.ContentDate
        sr.InstanceCreationTime = sr.ContentTime
        sr.TimezoneOffsetFromUTC = "+0000"
        for equipment in sr.get("ContributingEquipmentSequence", []):
            if equipment.get("ManufacturerModelName") == "highdicom":  # stamped with now()
                equipment.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f+0000")
    return sr
