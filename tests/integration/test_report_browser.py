"""The HTML report in a real browser (Debian ``chromium``, headless), and ``scanstream report``
reading the last findings off the findings topic.

The page is loaded twice, as a user's browser would from a file:

* with ``--dump-dom``, a copy of it with a small check script added (the page itself has none
  and needs none): each picture must have decoded (``naturalWidth > 0``) and, drawn on a canvas,
  must not be one flat colour; the script writes its verdict, the pictures' places on the page
  and any error event (a failed load included) into ``document.title``;
* with ``--screenshot``, the page as written: at each picture's place the screenshot must not be
  blank, and the plot's bars must be painted.

Console messages reach chromium's stderr (``--enable-logging=stderr --v=0``) as ``CONSOLE``
lines; there must be none. Without chromium the browser test is skipped, or fails under CI
(``CI`` set; .ci/run installs it).
"""

from __future__ import annotations

import copy
import html
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from tooling import require_tool

import worker
from worker.cli import main
from worker.imaging import analyze_frame, thumbnail_path, write_thumbnail
from worker.phantoms import Lesion, ct_slice
from worker.report import ReportEntry, render_report
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

EXAMPLE = Path(worker.__file__).parent / "schemas" / "examples" / "finding.v1.example.json"
WIDTH, HEIGHT = 1280, 2000

CHECK = """<script>
window.__errors = [];
addEventListener("error", function (e) {
  __errors.push(e.target && e.target.tagName ? "failed to load " + e.target.tagName
                                             : String(e.message));
}, true);
addEventListener("load", function () {
  var shown = [];
  document.querySelectorAll("img").forEach(function (img) {
    var c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    var flat = true;
    if (img.complete && img.naturalWidth > 0) {
      var g = c.getContext("2d"); g.drawImage(img, 0, 0);
      var d = g.getImageData(0, 0, c.width, c.height).data;
      for (var i = 4; i < d.length && flat; i += 4) {
        flat = d[i] === d[0] && d[i + 1] === d[1] && d[i + 2] === d[2];
      }
    }
    var r = img.getBoundingClientRect();
    shown.push({alt: img.alt, width: img.naturalWidth, flat: flat,
                rect: [r.left + scrollX, r.top + scrollY, r.width, r.height]});
  });
  document.title = JSON.stringify({images: shown, errors: __errors});
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    exe = require_tool("chromium", "chromium")
    command = [
        exe,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def console(stderr: str) -> list[str]:
    """Console messages (log, warning, error, uncaught exception) of the page."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def finding(event_id: str, box: dict[str, int] | None, frames: int = 1) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(json.loads(EXAMPLE.read_text()))
    doc.update(event_id=event_id, frame_count=frames, rows=128, columns=128)
    doc["edges"]["strongest_edge_bbox"] = box
    return doc


def entries() -> list[ReportEntry]:
    """Three phantoms: a normal one, one with a lesion and the CNN's box on it, and the second
    frame of a two-frame instance."""
    out = []
    for seed, lesion, frame in ((7, None, 0), (8, Lesion(60, 64, 6, 150), 0), (9, None, 1)):
        a = analyze_frame(ct_slice(seed, 128, lesion), "CT")
        assert a.edge_bbox is not None
        x, y, w, h = a.edge_bbox
        doc = finding(f"evt-{seed}", {"frame": frame, "x": x, "y": y, "width": w, "height": h}, 2)
        if lesion is not None:
            box = {"frame": 0, "x": 56, "y": 52, "width": 16, "height": 16}
            doc["classifications"][0]["saliency"] = {
                "method": "occlusion",
                "bbox": box,
                "max_drop": 1,
            }
        out.append(ReportEntry(doc, f"phantom {seed}", a.windowed, a.edge_map, frame))
    return out


def test_the_report_draws_in_a_real_browser(tmp_path: Path) -> None:
    samples = entries()
    page = render_report(samples, notes=["browser test"])
    plain = tmp_path / "report.html"
    plain.write_text(page, encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK, 1), encoding="utf-8")

    run = chromium("--dump-dom", checked.as_uri(), profile=tmp_path / "profile-dom")
    assert console(run.stderr) == []
    title = re.search(r"<title>(.*?)</title>", run.stdout, re.S)
    assert title is not None, run.stdout[:500]
    verdict = json.loads(html.unescape(title.group(1)))
    assert verdict["errors"] == []
    images = verdict["images"]
    assert len(images) == 2 * len(samples)
    assert [i["alt"] for i in images[::2]] == [
        f"windowed frame {s.frame} of {s.label}" for s in samples
    ]
    assert all(i["width"] > 0 and not i["flat"] for i in images), images

    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", plain.as_uri(), profile=tmp_path / "profile-shot")
    assert console(run.stderr) == []
    screen = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert screen is not None and screen.shape[:2] == (HEIGHT, WIDTH)
    for image in images:
        x, y, w, h = (round(v) for v in image["rect"])
        assert w >= 100 and h >= 100 and y + h <= HEIGHT, image
        crop = screen[y + 2 : y + h - 2, x + 2 : x + w - 2].astype(np.int16)
        assert crop.std() > 20, f"{image['alt']} looks blank on the screenshot"
        assert (np.abs(np.diff(crop, axis=1)).sum(axis=2) > 60).mean() > 0.005, image["alt"]
    # The lesion's windowed picture shows the CNN's box in red; the others have no such box.
    reds = []
    for image in images[::2]:
        x, y, w, h = (round(v) for v in image["rect"])
        b, g, r = (screen[y : y + h, x : x + w, i].astype(int) for i in range(3))
        reds.append(int(((r > 200) & (g < 60) & (b < 60)).sum()))
    assert reds[1] > 20 and reds[0] == reds[2] == 0, reds
    # The plot: bars in the decode stage's colour (#E69F00), one per sample.
    orange = (np.abs(screen.astype(int) - (0x00, 0x9F, 0xE6)).sum(axis=2) < 10).sum()
    assert orange > 20 * len(samples), orange


@pytest.mark.integration
def test_report_command_reads_the_last_findings(
    isolated_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven findings over three partitions and one record that is not a finding: ``scanstream
    report --last 5`` shows the five latest, oldest first, with the one thumbnail there is."""
    settings = isolated_settings
    bootstrap = settings.bootstrap_servers
    assert bootstrap is not None
    producer = kafka_clients.producer(bootstrap, settings)
    base = int(time.time() * 1000) - 60_000
    docs = [finding(f"evt-report-{i}", None) for i in range(7)]
    for i, doc in enumerate(docs):
        value = json.dumps(doc).encode()
        producer.send(settings.findings_topic, value=value, partition=i % 3, timestamp_ms=base + i)
    producer.send(
        settings.findings_topic, value=b"not a finding", partition=0, timestamp_ms=base + 9
    )
    producer.flush()
    producer.close()
    thumbs = tmp_path / "thumbs"
    edges = np.zeros((64, 64), np.uint8)
    edges[8:56, 20] = 255
    write_thumbnail(edges, thumbnail_path(thumbs, "evt-report-6", docs[6]["sop_instance_uid"]))
    monkeypatch.setenv("SCANSTREAM_FINDINGS_TOPIC", settings.findings_topic)
    monkeypatch.setenv("SCANSTREAM_THUMBNAIL_DIR", str(thumbs))
    out = tmp_path / "report.html"
    assert main(["report", "--bootstrap-servers", bootstrap, "--last", "5", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    shown = re.findall(r"<h2>(evt-report-\d)</h2>", page)
    assert shown == [f"evt-report-{i}" for i in range(2, 7)]
    assert page.count("<img ") == 1 and "edges (worker thumbnail)" in page
