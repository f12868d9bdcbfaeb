"""The report's summary plot: per sample, one horizontal bar of its stage timings
(``timings_ms``) stacked in pipeline order, with the end-to-end latency written beside it. Drawn
as inline SVG by hand (no plotting library at run time); every text is escaped.

>>> svg = timings_svg([("a", {"decode": 2.0, "cnn": 3.0}, 9.5), ("b<", {"decode": 1.0}, 4.0)])
>>> svg.startswith("<svg") and svg.count("<rect class=\\"stage\\"") == 3, "b&lt;" in svg
(True, True)
>>> nice_step(37.0), nice_step(0.8), nice_step(0.0)
(10.0, 0.2, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Final

#: Stage names of ``timings_ms`` in pipeline order, with their colours (colour-blind safe:
#: Okabe-Ito, then greys for the remainder).
STAGE_COLOURS: Final = {
    "fetch": "#999999",
    "decode": "#E69F00",
    "filter": "#56B4E9",
    "edges": "#009E73",
    "features": "#F0E442",
    "svm": "#0072B2",
    "cnn": "#D55E00",
    "saliency": "#CC79A7",
    "finding": "#555555",
}
_OTHER: Final = "#BBBBBB"

_LABEL_W: Final = 230  # the sample names' column
_VALUE_W: Final = 190  # the totals written right of the bars
_ROW_H: Final = 20
_BAR_H: Final = 14
_TOP: Final = 34  # the legend
_AXIS_H: Final = 26


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks."""
    if not math.isfinite(span) or span <= 0:
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power:
            return round(factor * power, 12)
    return 10.0 * power  # pragma: no cover - the loop always returns


def _tick(ms: float, step: float) -> str:
    """A tick's label, with as many decimals as the step needs.

    >>> _tick(0.0, 50.0), _tick(0.4, 0.2), _tick(0.05, 0.05)
    ('0', '0.4', '0.05')
    """
    decimals = 0 if step >= 1 else math.ceil(-math.log10(step) - 1e-9)
    return f"{ms:.{decimals}f}"


def _fmt(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def timings_svg(rows: Sequence[tuple[str, Mapping[str, float], float]], width: int = 1000) -> str:
    """The plot for ``rows`` of (sample label, timings_ms, end-to-end latency in ms).

    Stages missing from a row did not run; a stage that is not in :data:`STAGE_COLOURS` is
    drawn grey after the known ones. The SVG scales to its container (``viewBox``).
    """
    stages = list(STAGE_COLOURS)
    extra = sorted({s for _, t, _ in rows for s in t} - set(stages))
    order = stages + extra
    totals = [sum(max(0.0, float(t.get(s, 0.0))) for s in order) for _, t, _ in rows]
    longest = max(totals, default=0.0)
    step = nice_step(longest)
    axis_max = step * max(1, math.ceil(longest / step)) if longest > 0 else step
    plot_w = width - _LABEL_W - _VALUE_W
    height = _TOP + _ROW_H * len(rows) + _AXIS_H

    def x_of(ms: float) -> float:
        return _LABEL_W + plot_w * ms / axis_max

    parts = [
        f'<svg class="timings" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        'aria-label="Time per pipeline stage for each sample">',
        "<title>Time per pipeline stage for each sample (ms)</title>",
    ]
    x = float(_LABEL_W)
    for stage in [s for s in order if any(s in t for _, t, _ in rows)]:
        colour = STAGE_COLOURS.get(stage, _OTHER)
        parts.append(f'<rect x="{x:.1f}" y="8" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16:.1f}" y="18" class="legend">{escape(stage)}</text>')
        x += 24 + 7.5 * len(stage)
    ticks = round(axis_max / step)
    axis_y = _TOP + _ROW_H * len(rows)
    for i in range(ticks + 1):
        tx = x_of(i * step)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 4}" x2="{tx:.1f}" y2="{axis_y}" class="grid"/>'
        )
        parts.append(
            f'<text x="{tx:.1f}" y="{axis_y + 16}" text-anchor="middle" class="tick">'
            f"{_tick(i * step, step)}</text>"
        )
    parts.append(f'<text x="{width - _VALUE_W + 26}" y="{axis_y + 16}" class="tick">ms</text>')
    for index, ((label, timings, latency), total) in enumerate(zip(rows, totals, strict=True)):
        y = _TOP + _ROW_H * index
        short = label if len(label) <= 32 else label[:31] + "…"
        parts.append(
            f'<text x="{_LABEL_W - 8}" y="{y + 14}" text-anchor="end" class="label">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        x = float(_LABEL_W)
        for stage in order:
            ms = max(0.0, float(timings.get(stage, 0.0)))
            if stage not in timings:
                continue
            w = plot_w * ms / axis_max
            colour = STAGE_COLOURS.get(stage, _OTHER)
            parts.append(
                f'<rect class="stage" x="{x:.2f}" y="{y + 3}" width="{w:.2f}" height="{_BAR_H}" '
                f'fill="{colour}"><title>{escape(label)}: {escape(stage)} {_fmt(ms)} ms</title>'
                "</rect>"
            )
            x += w
        parts.append(
            f'<text x="{width - _VALUE_W + 8}" y="{y + 14}" class="value">{_fmt(total)} ms · '
            f"end to end {_fmt(max(0.0, float(latency)))} ms</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
