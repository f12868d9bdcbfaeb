"""The HTML report (worker/report): every sample on the page with its pictures as inline PNG data
URIs and its boxes drawn, the SVG plot of the time per stage, nothing fetched or run, everything
escaped, and no patient data even from an instance full of it (tests/phi_markers.py).

The page in a real browser: tests/integration/test_report_browser.py.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from phi_markers import cases, leaks

import worker
from worker.contract import ScanEvent
from worker.imaging import analyze_frame, thumbnail_path, write_thumbnail
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import Pipeline
from worker.report import (
    ReportEntry,
    entry_from_dicom,
    entry_from_thumbnail_dir,
    render_report,
    write_report,
)
from worker.report.images import edge_picture, windowed_picture
from worker.report.plot import STAGE_COLOURS, timings_svg
from worker.report.topic import parse_finding
from worker.settings import Secret, Settings

EXAMPLE = Path(worker.__file__).parent / "schemas" / "examples" / "finding.v1.example.json"
IMG = re.compile(r'<img src="([^"]*)"')
CYAN, RED = (255, 255, 0), (0, 0, 255)  # BGR


def finding(event_id: str, **changes: Any) -> dict[str, Any]:
    """The schema's example finding with another event id (and ``changes`` on top)."""
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    doc["event_id"] = event_id
    doc.update(copy.deepcopy(changes))
    return doc


def single_frame(
    event_id: str, box: dict[str, int] | None = None, **changes: Any
) -> dict[str, Any]:
    doc = finding(event_id, frame_count=1, rows=128, columns=128, **changes)
    doc["edges"]["strongest_edge_bbox"] = box
    for cls in doc["classifications"]:
        cls["frame"] = 0
    return doc


def decoded(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), -1)
    assert image is not None
    return np.asarray(image)


def has_colour(image: np.ndarray, bgr: tuple[int, int, int]) -> bool:
    return image.ndim == 3 and bool((image[:, :, :3] == bgr).all(axis=2).any())


@pytest.fixture(scope="module")
def phantom_entries() -> list[ReportEntry]:
    box = {"frame": 0, "x": 20, "y": 30, "width": 60, "height": 40}
    salient = {"frame": 0, "x": 56, "y": 52, "width": 16, "height": 16}
    lesion = single_frame("evt-lesion", box)
    lesion["classifications"][0]["saliency"] = {
        "method": "occlusion",
        "bbox": salient,
        "max_drop": 2,
    }
    lesion["classifications"][1].update(in_domain=False, domain_reasons=["values", "features"])
    entries = []
    for seed, doc in ((7, single_frame("evt-normal", box)), (8, lesion)):
        a = analyze_frame(ct_slice(seed, 128, Lesion(60, 64, 6, 150) if seed == 8 else None), "CT")
        entries.append(ReportEntry(doc, None, a.windowed, a.edge_map, 0))
    entries.append(ReportEntry(single_frame("evt-no-pictures", None), "no pictures"))
    return entries


def test_every_sample_is_on_the_page_with_its_pictures(phantom_entries: list[ReportEntry]) -> None:
    page = render_report(phantom_entries)
    for index, label in enumerate(["evt-normal", "evt-lesion", "no pictures"]):
        assert f'id="sample-{index}"><h2>{label}</h2>' in page
    uris = IMG.findall(page)
    assert len(uris) == 4  # two per sample with pictures; the third has placeholders
    assert page.count('class="noimage"') == 2
    pictures = [decoded(u) for u in uris]
    assert [p.shape for p in pictures] == [(128, 128, 3)] * 4
    # The strongest-edge box on both pictures of both; the saliency box on the lesion's only.
    assert all(has_colour(p, CYAN) for p in pictures)
    assert [has_colour(p, RED) for p in pictures] == [False, False, True, True]
    assert "0.93" in page and "end to end <b>21.7 ms</b>" in page
    lesion = page.split('id="sample-1"')[1].split('id="sample-2"')[0]
    assert "outside: values, features" in lesion and "not declared" in lesion  # the CNN: no card
    assert "CNN looked: 16×16 at (56, 52)" in lesion


def test_the_page_needs_nothing_else(phantom_entries: list[ReportEntry]) -> None:
    page = render_report(phantom_entries)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for forbidden in ("<script", "<link", "@import", "url(", "http://", "https://", "<iframe"):
        assert forbidden not in page.lower(), forbidden
    assert all(u.startswith("data:image/png;base64,") for u in IMG.findall(page))
    assert re.findall(r'\ssrc="(?!data:image/png;base64,)', page) == []


def test_the_time_per_stage_plot(phantom_entries: list[ReportEntry]) -> None:
    page = render_report(phantom_entries)
    assert page.count("<svg") == 1 and page.count("</svg>") == 1
    stages = phantom_entries[0].finding["timings_ms"]
    assert page.count('<rect class="stage"') == len(phantom_entries) * len(stages)
    for stage in stages:
        assert f'fill="{STAGE_COLOURS[stage]}"' in page
    svg = timings_svg([("x", {"decode": 1.0, "custom": 2.0}, 5.0)])
    assert "custom" in svg and svg.count('<rect class="stage"') == 2
    assert timings_svg([]).startswith("<svg")  # an empty report still renders


def test_text_from_a_finding_is_escaped() -> None:
    doc = single_frame("<script>alert(1)</script>", None)
    doc["classifications"][0]["model"] = '"><img src=x onerror=alert(2)>'
    doc["modality"] = "<b>CT</b>"
    page = render_report([ReportEntry(doc)], title="<i>t</i>", notes=["<u>n</u>"])
    for raw in ("<script>", "<img src=x", "<b>CT", "<i>t", "<u>n"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_no_patient_data_on_the_page() -> None:
    """A finding made by the pipeline of an instance with markers in every identifying and
    free-text element, with its pictures recomputed from that same instance."""
    case = next(c for c in cases() if c.name == "alert")
    settings = Settings(pseudonym_key=Secret("k3y"))
    [outcome] = Pipeline(ModelSet.load(), settings).process(
        [ScanEvent("evt-phi", time.time(), data=case.data)]
    )
    assert outcome.finding is not None
    entry = entry_from_dicom(outcome.finding, case.data, caption="phi sample")
    assert entry.windowed is not None
    page = render_report([entry])
    assert leaks(page) == []
    # Not even the pseudonym or the UIDs: a caption names the sample.
    for key in ("patient_key", "study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert str(outcome.finding[key]) not in page
    assert len(IMG.findall(page)) == 2


def test_boxes_lie_on_their_frame() -> None:
    frame = np.linspace(0, 1, 100 * 200, dtype=np.float32).reshape(100, 200)
    box = {"frame": 1, "x": 10, "y": 10, "width": 50, "height": 50}
    assert has_colour(windowed_picture(frame, edge_bbox=box, frame=1), CYAN)
    assert not has_colour(windowed_picture(frame, edge_bbox=box, frame=0), CYAN)
    assert not has_colour(edge_picture(np.zeros((100, 200), np.uint8), saliency_bbox=box), CYAN)
    big = windowed_picture(np.zeros((1024, 512), np.float32), saliency_bbox=box, frame=1)
    assert big.shape == (256, 128, 3) and has_colour(big, RED)  # shrunk, never enlarged
    with pytest.raises(ValueError):
        windowed_picture(np.zeros((2, 3, 4), np.float32))


def test_pictures_recomputed_from_dicom_show_the_boxes_frame() -> None:
    data = encode_ct(ct_slice(3, 64), study="r", instance=1)
    doc = single_frame("e", {"frame": 0, "x": 1, "y": 1, "width": 5, "height": 5})
    entry = entry_from_dicom(doc, data)
    assert entry.frame == 0 and entry.windowed is not None and entry.edge_map is not None
    assert entry.windowed.shape == (64, 64) and entry.label == "e"
    assert entry_from_dicom(doc, data[:200]).windowed is None  # does not decode: no pictures


def test_thumbnails_come_from_the_thumbnail_dir_by_their_hashed_name(tmp_path: Path) -> None:
    doc = finding("evt-thumb")
    edges = np.zeros((64, 64), np.uint8)
    edges[10:50, 30] = 255
    write_thumbnail(edges, thumbnail_path(tmp_path, doc["event_id"], doc["sop_instance_uid"]))
    entry = entry_from_thumbnail_dir(doc, tmp_path)
    assert entry.thumbnail is not None and entry.thumbnail.shape == (64, 64, 3)
    page = render_report([entry])
    assert "edges (worker thumbnail)" in page and len(IMG.findall(page)) == 1
    # The path the finding names is never read: only the worker's name under the folder.
    elsewhere = tmp_path / "elsewhere"
    other = finding("evt-other")
    other["edges"]["thumbnail"] = str(
        thumbnail_path(tmp_path, "evt-thumb", doc["sop_instance_uid"])
    )
    assert entry_from_thumbnail_dir(other, tmp_path).thumbnail is None
    assert entry_from_thumbnail_dir(doc, elsewhere).thumbnail is None
    assert entry_from_thumbnail_dir(doc, None).thumbnail is None


def test_write_report_and_parse_finding(tmp_path: Path) -> None:
    doc = finding("evt-1")
    assert parse_finding(json.dumps(doc).encode()) == doc
    assert parse_finding(json.dumps({**doc, "patient_name": "x"}).encode()) is None
    assert parse_finding(b"[1]") is None
    path = write_report([ReportEntry(doc)], tmp_path / "out" / "r.html", notes=["hello"])
    text = path.read_text(encoding="utf-8")
    assert "evt-1" in text and "hello" in text
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temporary file left
