"""The worker's own ``/metrics``, scraped before and after a bench phase: where its time went.

:func:`stage_means` turns two scrapes into mean milliseconds per stage (and the inference batch
size); :func:`stage_quantile` estimates a quantile of one stage from the histogram's buckets;
:func:`events_counted` reads the events the worker counted.
"""

from __future__ import annotations

import math
import re
from typing import Final

_SAMPLE = re.compile(
    r'^scanstream_(stage_duration_seconds|batch_size)_(sum|count)(?:\{stage="(\w+)"\})? (\S+)$'
)


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(3) or "", m.group(2))] = float(m.group(4))
    return out


def events_counted(text: str) -> float:
    """The worker's ``scanstream_events_total``, summed over its labels (a failed phase's
    diagnosis: :mod:`worker.bench.diagnose`).

    >>> page = ['# HELP scanstream_events_total ...', 'scanstream_events_total{outcome="f"} 3.0',
    ...         'scanstream_events_total{outcome="d"} 1.0', 'scanstream_alerts_total{x="y"} 9.0']
    >>> events_counted(chr(10).join(page))
    4.0
    """
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("scanstream_events_total{")
    )


def stage_means(before: str, after: str) -> dict[str, float]:
    """Mean ms per observation of each worker stage between two ``/metrics`` scrapes.

    Also ``batch_size``, the mean of the worker's ``scanstream_batch_size`` histogram, and
    ``events_per_chunk`` (decode observations per produce observation: the loop decodes once per
    event and delivers once per computed chunk). Stages without observations are left out.

    >>> line = 'scanstream_stage_duration_seconds_{}{{stage="commit"}} {}'.format
    >>> a = line("sum", 0.5) + "\\n" + line("count", 10.0)
    >>> b = line("sum", 0.56) + "\\n" + line("count", 30.0)
    >>> stage_means(a, b)
    {'commit_ms': 3.0}
    """
    old, new = _samples(before), _samples(after)
    out, counts = {}, {}
    for (name, stage, kind), total in sorted(new.items()):
        if kind != "sum":
            continue
        count = new.get((name, stage, "count"), 0.0) - old.get((name, stage, "count"), 0.0)
        counts[stage or name] = count
        if count > 0:
            mean = (total - old.get((name, stage, "sum"), 0.0)) / count
            key = "batch_size" if name == "batch_size" else f"{stage}_ms"
            out[key] = round(mean if name == "batch_size" else mean * 1e3, 3)
    # decode is observed once per event, produce once per delivered chunk.
    if counts.get("decode") and counts.get("produce"):
        out["events_per_chunk"] = round(counts["decode"] / counts["produce"], 3)
    for stage in WAIT_STAGES:
        p99 = stage_quantile(before, after, stage, 0.99)
        if p99 is not None:
            out[f"{stage}_p99_ms"] = round(p99 * 1e3, 3)
    return out


#: The waits before compute the worker observes per event (see worker.metrics.STAGES).
WAIT_STAGES: Final = ("arrival", "queue")
_BUCKET = re.compile(
    r'^scanstream_stage_duration_seconds_bucket\{(?=[^}]*stage="(\w+)")(?=[^}]*le="([^"]+)")[^}]*\}'
    r" (\S+)$"
)


def stage_quantile(before: str, after: str, stage: str, q: float) -> float | None:
    """The ``q`` quantile (seconds) of one stage's observations between two scrapes, estimated
    from the histogram's buckets as Prometheus' ``histogram_quantile`` does (linear within the
    bucket); None without observations. Coarse: only as fine as the buckets around it.

    >>> line = 'scanstream_stage_duration_seconds_bucket{{stage="queue",le="{}"}} {}'.format
    >>> after = "\\n".join([line("0.01", 90), line("0.025", 100), line("+Inf", 100)])
    >>> round(stage_quantile("", after, "queue", 0.95), 4)
    0.0175
    """
    old, new = _buckets(before, stage), _buckets(after, stage)
    counts = [(le, n - old.get(le, 0.0)) for le, n in sorted(new.items())]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bucket: its bound, as Prometheus does
            width = n - lower_n
            return lower_le + (le - lower_le) * ((rank - lower_n) / width if width else 1.0)
        lower_le, lower_n = le, n
    return None


def _buckets(text: str, stage: str) -> dict[float, float]:
    out = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m and m.group(1) == stage:
            out[float(m.group(2))] = float(m.group(3))
    return out
