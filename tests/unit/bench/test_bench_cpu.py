"""CPU time by role: read from /proc for real processes, and the per-event arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from worker.bench.cpu import CpuMeter, cpu_rows, own_cpu_s, tree_cpu_s
from worker.bench.report import render_markdown

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# CPU times come in clock ticks (os.times and /proc: 1/SC_CLK_TCK s, 10 ms here), so a reading
# can fall short of the time burnt by up to two ticks: the checks allow exactly that.
_SLACK_S = 2.0 / os.sysconf("SC_CLK_TCK")
_BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def test_a_child_process_cpu_is_counted_with_its_parent() -> None:
    # A parent that waits for a child which burns 0.3 s of CPU and then sleeps 3 s: while the
    # child lives, the tree's CPU includes the child's.
    child = _BURN.format(s=0.3) + "time.sleep(3)\n"
    code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}])\n"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        used = 0.0
        while time.monotonic() < deadline and used < 0.3 - _SLACK_S and parent.poll() is None:
            time.sleep(0.05)
            used = tree_cpu_s([parent.pid]) or 0.0
        assert used >= 0.3 - _SLACK_S
        assert parent.wait(timeout=30) == 0
    finally:
        parent.kill()
        parent.wait()
    assert tree_cpu_s([parent.pid]) is None  # gone: nothing to read


def test_per_event_figures_and_roles_left_out() -> None:
    values = {"worker": 1.0, "gone": 5.0}
    meter = CpuMeter({"worker": lambda: values["worker"], "gone": lambda: values["gone"],
                      "absent": lambda: None})  # fmt: skip
    start = meter.sample()
    assert start == {"worker": 1.0, "gone": 5.0}
    values.update(worker=3.0, gone=1.0)  # "gone" lost a child: its total went down
    out = meter.per_event(start, events=100, seconds=4.0)
    assert out == {"cpu_ms_per_event": {"worker": 20.0}, "cores_busy": 0.5}


def test_own_cpu_grows_when_this_process_works() -> None:
    before = own_cpu_s()
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert own_cpu_s() - before >= 0.05 - _SLACK_S


def test_the_markdown_shows_a_cpu_row_per_burst() -> None:
    burst = {"img_s": 90.0, "img_s_whole_burst": 80.5,
             "cpu_ms_per_event": {"worker": 9.5, "broker": 3.25, "bench": 2.0},
             "cores_busy": 1.35}  # fmt: skip
    result = {"limit_img_s": 100.0, "cores": 2, "phases": {"worker1": {"bursts": [burst, {}]}}}
    assert cpu_rows(result) == [["worker1 1", 90.0, 80.5, 9.5, 3.25, 2.0, 1.35]]
    md = render_markdown(result)
    assert "| worker1 1 | 90.0 | 80.5 | 9.5 | 3.25 | 2 | 1.35 |" in md
