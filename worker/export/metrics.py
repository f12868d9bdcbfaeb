"""The exporter's metrics, in a registry of its own (``scanstream export`` serves them).

Recorded in one place, :class:`worker.export.loop.Exporter`: a send attempt's outcome and
duration when it ends, dead letters once their offsets are committed, lag after each commit.

>>> m = ExportMetrics()
>>> m.attempt("sent", 0.02); m.attempt("unreachable", 1.0)
>>> b'scanstream_export_sent_total 1.0' in m.render()
True
>>> b'scanstream_export_failures_total{reason="unreachable"} 1.0' in m.render()
True
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# A send's outcome: stored, or why not (each failed attempt is counted once).
ATTEMPT_OUTCOMES: Final = ("sent", "rejected", "failed", "unreachable")
DEAD_LETTER_REASONS: Final = ("export_rejected", "export_failed")
# One C-STORE or STOW-RS round trip: milliseconds on a LAN, seconds for a slow PACS.
SEND_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ExportMetrics:
    """Sent, failed by reason, send latency, dead letters, lag and whether the destination is up.

    ``destination`` is the destination's loggable name (no credentials), a label on the gauge
    ``scanstream_export_destination_up`` only, so one dashboard can tell exporters apart.
    """

    def __init__(self, destination: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._sent = Counter(
            "scanstream_export_sent",
            "SRs the destination stored (or already had).",
            registry=r,
        )
        self._failures = Counter(
            "scanstream_export_failures",
            "Send attempts that did not store the SR, by reason: rejected (for good), failed "
            "(temporary, charged to the record), unreachable (the destination is away).",
            ["reason"],
            registry=r,
        )
        self._seconds = Histogram(
            "scanstream_export_send_duration_seconds",
            "Seconds one send attempt took, answer included, by outcome.",
            ["outcome"],
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self._dead = Counter(
            "scanstream_export_dead_letters",
            "SR records set aside on the dead-letter topic (committed), by reason.",
            ["reason"],
            registry=r,
        )
        self._lag = Gauge(
            "scanstream_export_lag",
            "SR records between the exporter's position and the end of an assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self._up = Gauge(
            "scanstream_export_destination_up",
            "1 while the destination answers, 0 while it is unreachable.",
            ["destination"],
            registry=r,
        )
        self._destination = destination
        self._up.labels(destination).set(1)
        for outcome in ATTEMPT_OUTCOMES:
            self._seconds.labels(outcome)
            if outcome != "sent":
                self._failures.labels(outcome)
        for reason in DEAD_LETTER_REASONS:
            self._dead.labels(reason)

    def attempt(self, outcome: str, seconds: float) -> None:
        """One send attempt ended with ``outcome`` (one of :data:`ATTEMPT_OUTCOMES`)."""
        if outcome not in ATTEMPT_OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {ATTEMPT_OUTCOMES}")
        self._seconds.labels(outcome).observe(max(0.0, seconds))
        if outcome == "sent":
            self._sent.inc()
        else:
            self._failures.labels(outcome).inc()
        self._up.labels(self._destination).set(0 if outcome == "unreachable" else 1)

    def dead_letter(self, reason: str) -> None:
        if reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"unknown reason {reason!r}; expected one of {DEAD_LETTER_REASONS}")
        self._dead.labels(reason).inc()

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self._lag.labels(topic, str(partition)).set(lag)

    def remove_lag(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):  # never reported
            self._lag.remove(topic, str(partition))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
