"""Where a report's pictures come from, and writing the page: the glue around the pure
:func:`~worker.report.render.render_report`.

* :func:`entry_from_dicom`: recomputed from the DICOM bytes that were sent (``scanstream demo``
  has them): decode, then the imaging stage on the frame the finding's boxes lie in.
* :func:`entry_from_thumbnail_dir`: the edge thumbnail the worker wrote for the finding, looked
  up under ``SCANSTREAM_THUMBNAIL_DIR`` by the name the worker gives it (a hash of the event id
  and SOPInstanceUID, :func:`~worker.imaging.thumbnail.thumbnail_path`); never the path the
  finding names, which comes off a topic and could point anywhere.

>>> import numpy as np
>>> from worker.phantoms import ct_slice, encode_ct
>>> finding = {"event_id": "e1", "frame_count": 1, "edges": {"strongest_edge_bbox": None}}
>>> entry = entry_from_dicom(finding, encode_ct(ct_slice(seed=2, size=64)), caption="phantom")
>>> entry.windowed.shape, entry.edge_map.shape, entry.frame, entry.label
((64, 64), (64, 64), 0, 'phantom')
>>> entry_from_dicom(finding, b"not dicom").windowed is None
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from worker.atomic import write_atomically
from worker.dicom import decode
from worker.errors import Rejection
from worker.imaging import ImagingConfig, analyze_frame, thumbnail_path
from worker.report.render import DEFAULT_TITLE, ReportEntry, edge_box, render_report, saliency_box

#: The demo's page, relative to the working directory.
DEMO_REPORT: Final = Path("results/demo.html")
#: A thumbnail larger than this is not one the worker wrote: it is left out.
MAX_THUMBNAIL_BYTES: Final = 4 * 1024 * 1024
DEMO_NOTES: Final = (
    "Live findings of scanstream demo: real DICOM samples bundled with pydicom and two "
    "synthetic CT phantoms, one with a lesion.",
    "The models are demonstration models trained on synthetic CT phantoms, not clinically "
    "validated; their scores on the real samples (other modalities, other anatomy) carry no "
    "meaning.",
)


def shown_frame(finding: Mapping[str, Any]) -> int:
    """The frame a report shows: the one the CNN's saliency box lies in, else the one of the
    strongest edge, else the first.

    >>> shown_frame({"edges": {"strongest_edge_bbox": {"frame": 2}}, "classifications": []})
    2
    """
    for box in (saliency_box(finding), edge_box(finding)):
        if box is not None:
            return max(0, int(box.get("frame", 0)))
    return 0


def entry_from_dicom(
    finding: Mapping[str, Any],
    data: bytes,
    caption: str | None = None,
    imaging: ImagingConfig = ImagingConfig(),
) -> ReportEntry:
    """The entry with the windowed frame and edge map recomputed from ``data`` (the instance the
    finding was made of), as the worker computed them; without pictures if it does not decode."""
    frame = shown_frame(finding)
    try:
        instance = decode(data)
        frame = min(frame, len(instance.frames) - 1)
        analysis = analyze_frame(instance.frames[frame], instance.meta.modality, imaging)
    except (Rejection, ValueError):
        return ReportEntry(finding, caption)
    return ReportEntry(finding, caption, analysis.windowed, analysis.edge_map, frame)


def entry_from_thumbnail_dir(
    finding: Mapping[str, Any], folder: str | os.PathLike[str] | None, caption: str | None = None
) -> ReportEntry:
    """The entry with the worker's edge thumbnail of the finding, if ``folder`` holds it."""
    if not folder:
        return ReportEntry(finding, caption)
    path = thumbnail_path(folder, str(finding.get("event_id")), finding.get("sop_instance_uid"))
    try:
        if not path.is_file() or path.stat().st_size > MAX_THUMBNAIL_BYTES:
            return ReportEntry(finding, caption)
        data = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError:
        return ReportEntry(finding, caption)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    thumbnail = None if image is None else np.asarray(image, dtype=np.uint8)
    return ReportEntry(finding, caption, thumbnail=thumbnail)


def write_report(
    entries: Iterable[ReportEntry],
    path: str | os.PathLike[str],
    title: str = DEFAULT_TITLE,
    notes: Sequence[str] = (),
) -> Path:
    """Render ``entries`` and write the page at ``path`` (parents created, replaced atomically)."""
    page = render_report(entries, title, notes)
    return write_atomically(path, page.encode("utf-8"), mode=0o644)


def write_demo_report(
    samples: Iterable[tuple[str, bytes, Mapping[str, Any]]], path: str | os.PathLike[str]
) -> Path:
    """The demo's page: per (sample name, DICOM bytes sent, finding), in that order."""
    entries = [entry_from_dicom(finding, data, caption=name) for name, data, finding in samples]
    return write_report(entries, path, "ScanStream demo", DEMO_NOTES)
