"""CPU time by role during a benchmark burst: the worker, the broker, and this process.

On two cores the worker shares the machine with the local broker and with the benchmark's own
publisher and reader, so the end-to-end rate cannot reach the in-process compute limit however
thin the loop is. These figures say where the cores went: CPU milliseconds per event for each
role, and how many cores were busy in all, over one burst.

CPU time is read from ``/proc/<pid>/stat`` (user plus system, every thread) for a process and
its living descendants, so Linux only; elsewhere, or for a broker this run did not start, the
role is left out. This process's own time comes from :func:`os.times`.

>>> meter = CpuMeter({"bench": own_cpu_s})
>>> start = meter.sample()
>>> sorted(meter.per_event(start, events=10, seconds=1.0))
['cores_busy', 'cpu_ms_per_event']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def own_cpu_s() -> float:
    """User plus system CPU seconds of this process, every thread."""
    t = os.times()
    return t.user + t.system


def _stat_cpu_s(pid: int) -> float | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces: state is [0], utime [11], stime [12].
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_cpu_s(pids: Iterable[int]) -> float | None:
    """CPU seconds of ``pids`` and their living descendants; None when none could be read.

    >>> tree_cpu_s([os.getpid()]) is None or tree_cpu_s([os.getpid()]) >= 0.0
    True
    """
    total, seen, stack = None, set(), list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        cpu = _stat_cpu_s(pid)
        if cpu is not None:
            total = (total or 0.0) + cpu
            stack += _children(pid)
    return total


class CpuMeter:
    """CPU seconds per role, each from a callable that may answer None (role not measured)."""

    def __init__(self, roles: Mapping[str, Callable[[], float | None]]) -> None:
        self.roles = dict(roles)

    def sample(self) -> dict[str, float]:
        """Each measured role's CPU seconds so far."""
        out = {}
        for name, read in self.roles.items():
            value = read()
            if value is not None:
                out[name] = value
        return out

    def per_event(self, start: Mapping[str, float], events: int, seconds: float) -> dict[str, Any]:
        """CPU ms per event by role since ``start``, and the cores busy in all over ``seconds``.

        A role whose process went away meanwhile (its CPU went down) is left out.
        """
        end = self.sample()
        used = {k: end[k] - start[k] for k in start if k in end and end[k] >= start[k]}
        return {
            "cpu_ms_per_event": {k: round(1e3 * v / max(events, 1), 3) for k, v in used.items()},
            "cores_busy": round(sum(used.values()) / seconds, 3) if seconds > 0 else 0.0,
        }


def cpu_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """Rows of (burst, img/s on the backlog, img/s over the whole burst, worker, broker and
    bench CPU ms per event, cores busy) for each saturation burst that measured its CPU.

    >>> burst = {"img_s": 90.0, "cpu_ms_per_event": {"worker": 9.0}, "cores_busy": 1.5}
    >>> cpu_rows({"phases": {"worker1": {"bursts": [burst]}}})
    [['worker1 1', 90.0, None, 9.0, None, None, 1.5]]
    """
    rows = []
    for tag, phase in result.get("phases", {}).items():
        for i, burst in enumerate(phase.get("bursts", [])):
            if "cpu_ms_per_event" in burst:
                cpu = burst["cpu_ms_per_event"]
                roles = [cpu.get(k) for k in ("worker", "broker", "bench")]
                rates = [burst.get("img_s"), burst.get("img_s_whole_burst")]
                rows.append([f"{tag} {i + 1}", *rates, *roles, burst.get("cores_busy")])
    return rows
