"""A report you can look at: findings and their pictures as one self-contained HTML page.

:func:`render_report` (pure) turns :class:`ReportEntry` items (a finding.v1 document plus,
optionally, pictures of one of its frames) into the page: inline PNGs, inline CSS, an inline SVG
plot of the time per stage, no script and nothing fetched. :mod:`worker.report.sources` finds the
pictures (recomputed from DICOM bytes, or the worker's thumbnails) and writes the page;
:mod:`worker.report.topic` reads the last findings off the findings topic
(``scanstream report``). ``scanstream demo`` writes ``results/demo.html``.
"""

from worker.report.render import DEFAULT_TITLE, ReportEntry, render_report
from worker.report.sources import (
    DEMO_REPORT,
    entry_from_dicom,
    entry_from_thumbnail_dir,
    write_demo_report,
    write_report,
)

__all__ = [
    "DEFAULT_TITLE",
    "DEMO_REPORT",
    "ReportEntry",
    "entry_from_dicom",
    "entry_from_thumbnail_dir",
    "render_report",
    "write_demo_report",
    "write_report",
]
