"""The report page: findings (finding.v1 documents) and their pictures as one self-contained HTML
page. Pure: :func:`render_report` takes entries and returns text; no Kafka, no files.

The page needs nothing else: pictures are inline PNG data URIs, the style is inline CSS, the
summary plot is inline SVG, and there is no script. It shows only what a finding carries, and
not all of that: no UIDs and no patient pseudonym, just the caption its caller chose (an event id
or a sample name), modality, size, frames, the boxes, each model's score and domain status and
the timings.

>>> finding = {"event_id": "e<1>", "modality": "CT", "rows": 8, "columns": 8, "frame_count": 1,
...            "classifications": [], "timings_ms": {"decode": 1.5}, "latency_ms": 7.0,
...            "edges": {"strongest_edge_bbox": None}}
>>> page = render_report([ReportEntry(finding)])
>>> page.startswith("<!DOCTYPE html>"), "e&lt;1&gt;" in page, "<script" in page
(True, True, False)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from worker.report.images import edge_picture, picture, png_data_uri, windowed_picture
from worker.report.plot import timings_svg

DEFAULT_TITLE: Final = "ScanStream findings"


@dataclass(frozen=True, eq=False)
class ReportEntry:
    """One sample of the report: its finding and, optionally, pictures of one of its frames.

    ``windowed`` (floats in [0, 1], or uint8) and ``edge_map`` (0/255) are (rows, columns)
    arrays of frame ``frame``, as :class:`~worker.imaging.FrameAnalysis` holds them; the
    finding's boxes that lie on that frame are drawn on them. ``thumbnail`` is a ready picture,
    such as the worker's edge thumbnail, shown as it is (its boxes are drawn already).
    """

    finding: Mapping[str, Any]
    caption: str | None = None  # default: the finding's event id
    windowed: npt.NDArray[Any] | None = None
    edge_map: npt.NDArray[np.uint8] | None = None
    frame: int = 0
    thumbnail: npt.NDArray[np.uint8] | None = None

    @property
    def label(self) -> str:
        return self.caption or str(self.finding.get("event_id") or "?")


def saliency_box(finding: Mapping[str, Any]) -> dict[str, int] | None:
    """The first classification's saliency box (where the CNN looked), if any has one."""
    for cls in finding.get("classifications") or ():
        saliency = cls.get("saliency") if isinstance(cls, Mapping) else None
        if isinstance(saliency, Mapping) and isinstance(saliency.get("bbox"), Mapping):
            return dict(saliency["bbox"])
    return None


def edge_box(finding: Mapping[str, Any]) -> dict[str, int] | None:
    """The finding's strongest-edge box, if it has one."""
    box = (finding.get("edges") or {}).get("strongest_edge_bbox")
    return dict(box) if isinstance(box, Mapping) else None


_CSS: Final = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0; padding: 20px 28px; background: #f4f5f7; color: #1d2430; }
h1 { font-size: 22px; margin: 0 0 4px; }
.note { color: #5a6170; margin: 2px 0; }
.summary, .sample { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; }
.summary { padding: 12px 16px; margin: 14px 0 18px; }
.summary svg { width: 100%; height: auto; display: block; }
.summary .stats { margin: 0 0 8px; }
svg .label, svg .value, svg .tick, svg .legend { font: 12px system-ui, "DejaVu Sans", sans-serif;
  fill: #1d2430; }
svg .tick { fill: #5a6170; }
svg .grid { stroke: #e3e6eb; stroke-width: 1; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr));
  gap: 14px; }
.sample { padding: 10px 14px 12px; }
.sample h2 { font-size: 15px; margin: 0; overflow-wrap: anywhere; }
.meta { color: #5a6170; font-size: 12px; margin: 2px 0 8px; }
.pictures { display: flex; gap: 10px; margin-bottom: 8px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #5a6170; text-align: center; }
.pictures img, .noimage { width: 176px; height: 176px; display: block; background: #000;
  object-fit: contain; image-rendering: pixelated; border-radius: 4px; }
.noimage { background: #e8eaee; color: #8a909c; display: flex; align-items: center;
  justify-content: center; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
.nowrap { white-space: nowrap; }
th, td { text-align: left; padding: 2px 6px 2px 0; vertical-align: middle; }
th { font-weight: 600; color: #5a6170; font-size: 12px; }
.bar { display: inline-block; width: 60px; height: 8px; background: #e3e6eb;
  border-radius: 4px; vertical-align: middle; margin-right: 6px; overflow: hidden; }
.bar > span { display: block; height: 100%; background: #0072B2; }
.positive { color: #b3261e; font-weight: 600; }
.muted { color: #8a909c; }
.in { color: #1b7f3b; }
.out { color: #a05a00; }
.latency { margin: 8px 0 0; }
.boxes { font-size: 12px; color: #5a6170; margin: 2px 0 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 2px solid; margin: 0 4px 0
  8px; vertical-align: -1px; }
"""


def _num(value: Any, digits: int = 1) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "?"


def _img(uri: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{uri}" alt="{escape(alt)}"><figcaption>{escape(caption)}'
        "</figcaption></figure>"
    )


def _no_img(caption: str) -> str:
    return (
        f'<figure><div class="noimage">no image</div><figcaption>{escape(caption)}'
        "</figcaption></figure>"
    )


def _pictures(entry: ReportEntry) -> str:
    finding, label = entry.finding, entry.label
    edge, salient = edge_box(finding), saliency_box(finding)
    where = f"frame {entry.frame}" if int(finding.get("frame_count") or 1) > 1 else "frame"
    parts = []
    if entry.windowed is not None:
        uri = png_data_uri(
            windowed_picture(
                entry.windowed, edge_bbox=edge, saliency_bbox=salient, frame=entry.frame
            )
        )
        parts.append(_img(uri, f"windowed {where} of {label}", f"windowed {where}"))
    else:
        parts.append(_no_img("windowed frame"))
    if entry.edge_map is not None:
        uri = png_data_uri(
            edge_picture(entry.edge_map, edge_bbox=edge, saliency_bbox=salient, frame=entry.frame)
        )
        parts.append(_img(uri, f"edge map of {label}", "edges (Canny)"))
    elif entry.thumbnail is not None:
        uri = png_data_uri(picture(entry.thumbnail))
        parts.append(_img(uri, f"edge thumbnail of {label}", "edges (worker thumbnail)"))
    else:
        parts.append(_no_img("edges"))
    return f'<div class="pictures">{"".join(parts)}</div>'


def _domain(cls: Mapping[str, Any]) -> str:
    in_domain = cls.get("in_domain")
    if in_domain is True:
        return '<span class="in">inside</span>'
    if in_domain is False:
        reasons = ", ".join(str(r) for r in cls.get("domain_reasons") or ())
        return f'<span class="out">outside{f": {escape(reasons)}" if reasons else ""}</span>'
    return '<span class="muted">not declared</span>'


def _scores(finding: Mapping[str, Any]) -> str:
    rows = []
    for cls in finding.get("classifications") or ():
        if not isinstance(cls, Mapping):
            continue
        try:
            p = min(1.0, max(0.0, float(cls.get("probability", 0.0))))
        except (TypeError, ValueError):
            p = 0.0
        label = escape(str(cls.get("label", "")))
        verdict = f'<span class="{"positive" if cls.get("positive") else "muted"}">{label}</span>'
        rows.append(
            f'<tr><td class="nowrap">{escape(str(cls.get("model", "?")))}</td>'
            f'<td class="nowrap"><span class="bar"><span style="width:{p * 100:.0f}%"></span>'
            f"</span>{p:.2f}</td><td>{verdict}</td><td>{_domain(cls)}</td></tr>"
        )
    if not rows:
        return '<p class="muted">no model ran</p>'
    head = "<tr><th>model</th><th>probability</th><th>decision</th><th>input domain</th></tr>"
    return f'<table class="scores">{head}{"".join(rows)}</table>'


def _box_text(name: str, box: Mapping[str, Any] | None, frames: int) -> str:
    if box is None:
        return f"{name}: none"
    at = f", frame {box.get('frame', 0)}" if frames > 1 else ""
    return f"{name}: {box.get('width')}×{box.get('height')} at ({box.get('x')}, {box.get('y')}){at}"


def _sample(index: int, entry: ReportEntry) -> str:
    finding = entry.finding
    frames = int(finding.get("frame_count") or 1)
    stages = sum(float(v) for v in (finding.get("timings_ms") or {}).values())
    meta = (
        f"{escape(str(finding.get('modality', '?')))} · {_num(finding.get('columns'), 0)}×"
        f"{_num(finding.get('rows'), 0)} px · {frames} frame{'s' if frames != 1 else ''}"
    )
    density = (finding.get("edges") or {}).get("edge_density")
    if density is not None:
        meta += f" · edge density {_num(density, 3)}"
    boxes = (
        f'<span class="swatch" style="border-color:#00ffff"></span>'
        f"{escape(_box_text('strongest edge', edge_box(finding), frames))}"
    )
    salient = saliency_box(finding)
    if salient is not None:
        boxes += (
            f'<span class="swatch" style="border-color:#ff0000"></span>'
            f"{escape(_box_text('CNN looked', salient, frames))}"
        )
    return (
        f'<article class="sample" id="sample-{index}"><h2>{escape(entry.label)}</h2>'
        f'<p class="meta">{meta}</p>{_pictures(entry)}{_scores(finding)}'
        f'<p class="latency">end to end <b>{_num(finding.get("latency_ms"))} ms</b>'
        f' <span class="muted">· stages {stages:.1f} ms</span></p>'
        f'<p class="boxes">{boxes}</p></article>'
    )


def _summary(entries: Sequence[ReportEntry]) -> str:
    latencies = [float(e.finding.get("latency_ms") or 0.0) for e in entries]
    positives = sum(
        1
        for e in entries
        for c in e.finding.get("classifications") or ()
        if isinstance(c, Mapping) and c.get("positive") and c.get("in_domain") is True
    )
    stats = f"{len(entries)} sample{'s' if len(entries) != 1 else ''}"
    if latencies:
        stats += (
            f" · end-to-end latency median {statistics.median(latencies):.1f} ms, "
            f"max {max(latencies):.1f} ms · {positives} positive in-domain classification"
            f"{'s' if positives != 1 else ''}"
        )
    rows = [
        (
            e.label,
            {str(k): float(v) for k, v in (e.finding.get("timings_ms") or {}).items()},
            float(e.finding.get("latency_ms") or 0.0),
        )
        for e in entries
    ]
    return (
        f'<section class="summary"><p class="stats">{escape(stats)}</p>'
        f'<h2 style="font-size:15px;margin:4px 0">Time per stage</h2>{timings_svg(rows)}'
        "</section>"
    )


def render_report(
    entries: Iterable[ReportEntry], title: str = DEFAULT_TITLE, notes: Sequence[str] = ()
) -> str:
    """The whole page for ``entries``, in their order; ``notes`` are shown under the title."""
    items = list(entries)
    note_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    legend = (
        '<p class="note">Boxes: <span class="swatch" style="border-color:#00ffff"></span>'
        'strongest edge region <span class="swatch" style="border-color:#ff0000"></span>'
        "where the CNN looked (positive CNN frames only).</p>"
    )
    samples = "".join(_sample(i, e) for i, e in enumerate(items))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>{note_html}{legend}{_summary(items)}"
        f'<main class="samples">{samples}</main></body></html>\n'
    )
