"""Prometheus metrics, liveness/readiness, and the small HTTP server that exposes them.

Everything lives in a registry of its own (never prometheus_client's global one), so that tests,
the demo and several workers in one process do not share or clash over series. Labels take only
values from fixed sets (stages, outcomes, dead-letter reasons, severities) or from configuration
(topics, model names): never UIDs or anything from a DICOM file, which would leak patient data
and blow up cardinality.

>>> m = Metrics()
>>> m.observe_stage("decode", 0.004)
>>> m.count_event("dead_letter", "not_dicom")
>>> 'scanstream_events_total{outcome="dead_letter",reason="not_dicom"} 1.0' in m.render().decode()
True
"""

from __future__ import annotations

import contextlib
import http.server
import platform
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

import worker
from worker.errors import REASONS
from worker.inference.domain import REASONS as DOMAIN_PARTS

#: Per-event stages, and two waits before them: ``arrival`` (the event's sent-at, or record
#: timestamp, to the poll that returned it: the producer, the broker, the fetch, and any time the
#: loop was busy and not polling) and ``queue`` (that poll's return to the start of the compute
#: of the event's chunk). Their sum and the compute stages make up the finding's latency_ms.
STAGES: Final[tuple[str, ...]] = (
    "arrival",
    "queue",
    "fetch",
    "decode",
    "filter",
    "edges",
    "features",
    "svm",
    "cnn",
    "saliency",
    "sr",
    "produce",
    "commit",
)
OUTCOMES: Final[tuple[str, ...]] = ("finding", "dead_letter")
# Why results were sent again: a produce the broker did not acknowledge (sent again alone), a
# result the broker refused for good (sent as a dead letter instead), an aborted transaction
# (all of it sent again), a commit that failed (its events are replayed by whoever owns them).
REPLAY_CAUSES: Final[tuple[str, ...]] = ("produce", "refused", "transaction", "commit")
SEVERITIES: Final[tuple[str, ...]] = ("low", "medium", "high", "critical")
SR_OUTCOMES: Final[tuple[str, ...]] = ("produced", "not_built")
DOMAIN_REASONS: Final[tuple[str, ...]] = DOMAIN_PARTS  # worker.inference.domain.REASONS

# The end-to-end target is 50 ms: buckets are dense around it so p99 is read off well.
E2E_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The worker's metrics, in a registry of its own; :meth:`render` gives the text exposition.

    Known label values are created up front, so that ``rate()`` sees a zero before the first
    event (a counter born at 1 hides that first increase from Prometheus).

    >>> m = Metrics()
    >>> m.observe_e2e(0.012)
    >>> m.observe_stage("dekode", 0.1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown stage 'dekode'; expected one of arrival, queue, fetch, ...
    >>> m.set_model_info("lesion-cnn", "1.0.0", "CUDAExecutionProvider")
    >>> b'provider="CUDAExecutionProvider"' in m.render()
    True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._e2e = Histogram(
            "scanstream_e2e_latency_seconds",
            "Seconds from an event's sent-at (or record timestamp) to its finding acknowledged "
            "and committed.",
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self._stage = Histogram(
            "scanstream_stage_duration_seconds",
            "Seconds spent in one pipeline stage for one event (or batch, for produce/commit).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._events = Counter(
            "scanstream_events_total",
            "Events handled, by outcome (finding or dead_letter) and dead-letter reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self._alerts = Counter(
            "scanstream_alerts_total", "Alerts raised, by severity.", ["severity"], registry=r
        )
        self._out_of_domain = Counter(
            "scanstream_out_of_domain",
            "Classifications whose deciding frame lay outside the model's declared input "
            "domain, by model and reason (modality, size, spacing, values, features).",
            ["model", "reason"],
            registry=r,
        )
        self._srs = Counter(
            "scanstream_sr_total",
            "DICOM SRs asked for (SCANSTREAM_SR_TOPIC), by outcome: produced, or not_built.",
            ["outcome"],
            registry=r,
        )
        self._batch = Histogram(
            "scanstream_batch_size",
            "Events per polled batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._lag = Gauge(
            "scanstream_consumer_lag",
            "Records between the committed offset and the end of an assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self._replays = Counter(
            "scanstream_replays_total",
            "Times results were sent again or events will be replayed, by cause.",
            ["cause"],
            registry=r,
        )
        self._in_flight = Gauge(
            "scanstream_in_flight_events",
            "Events polled but not yet committed.",
            registry=r,
        )
        self._model_info = Gauge(
            "scanstream_model_info",
            "Loaded models (value 1), with version and ONNX Runtime execution provider.",
            ["name", "version", "provider"],
            registry=r,
        )
        self._gpu_required = Gauge(
            "scanstream_gpu_required",
            "1 when the worker is configured to require a GPU (CUDA) for inference, else 0.",
            registry=r,
        )
        self._build_info = Gauge(
            "scanstream_build_info",
            "Worker build (value 1): package version and Python version.",
            ["version", "python"],
            registry=r,
        )
        self._build_info.labels(worker.__version__, platform.python_version()).set(1)
        self._models: dict[str, tuple[str, str]] = {}
        self._models_lock = threading.Lock()
        for stage in STAGES:
            self._stage.labels(stage)
        self._events.labels("finding", "")
        for reason in REASONS:
            self._events.labels("dead_letter", reason)
        for severity in SEVERITIES:
            self._alerts.labels(severity)
        for outcome in SR_OUTCOMES:
            self._srs.labels(outcome)

    def declare_models(self, names: list[str]) -> None:
        """Create the per-model series at zero, so ``rate()`` sees the first increase."""
        for name in names:
            for reason in DOMAIN_REASONS:
                self._out_of_domain.labels(name, reason)
        for cause in REPLAY_CAUSES:
            self._replays.labels(cause)

    def count_replay(self, cause: str) -> None:
        """Count one resend or replay (``produce``, ``refused``, ``transaction``, ``commit``)."""
        if cause not in REPLAY_CAUSES:
            raise ValueError(f"unknown replay cause {cause!r}; expected one of {REPLAY_CAUSES}")
        self._replays.labels(cause).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record ``seconds`` spent in ``stage``; an unknown stage is a typo and raises."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        self._stage.labels(stage).observe(seconds)

    def count_out_of_domain(self, model: str, reason: str) -> None:
        """One out-of-domain classification of ``model`` for ``reason`` (a domain part)."""
        if reason not in DOMAIN_REASONS:
            raise ValueError(f"unknown domain reason {reason!r}; expected one of {DOMAIN_REASONS}")
        self._out_of_domain.labels(model, reason).inc()

    def count_sr(self, outcome: str) -> None:
        """Count one SR: ``produced`` with its finding, or ``not_built`` (the finding alone)."""
        if outcome not in SR_OUTCOMES:
            raise ValueError(f"unknown SR outcome {outcome!r}; expected one of {SR_OUTCOMES}")
        self._srs.labels(outcome).inc()

    def observe_e2e(self, seconds: float) -> None:
        """Record one event's end-to-end latency (clamped at 0: producer clocks can run ahead)."""
        self._e2e.observe(max(0.0, seconds))

    def count_event(self, outcome: str, reason: str = "") -> None:
        """Count one handled event: ``("finding", "")`` or ``("dead_letter", <reason>)``.

        >>> Metrics().count_event("finding", "not_dicom")
        Traceback (most recent call last):
        ...
        ValueError: a finding has no reason, got 'not_dicom'
        """
        if outcome == "finding":
            if reason:
                raise ValueError(f"a finding has no reason, got {reason!r}")
        elif outcome == "dead_letter":
            if reason not in REASONS:
                raise ValueError(f"unknown dead-letter reason {reason!r}")
        else:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        self._events.labels(outcome, reason).inc()

    def count_alert(self, severity: str) -> None:
        """Count one raised alert of ``severity`` (low, medium, high or critical)."""
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}; expected one of {SEVERITIES}")
        self._alerts.labels(severity).inc()

    def observe_batch(self, size: int) -> None:
        """Record the number of events in one polled batch."""
        self._batch.observe(size)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one assigned partition."""
        self._lag.labels(topic, str(partition)).set(max(0, lag))

    def remove_lag(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's lag, so that a stale value does not linger after rebalance.

        >>> m = Metrics()
        >>> m.set_lag("scans.events", 0, 5)
        >>> m.remove_lag("scans.events", 0)
        >>> m.remove_lag("scans.events", 0)  # removing twice is harmless
        >>> b"scanstream_consumer_lag{" in m.render()
        False
        """
        # Never set, or already removed: nothing to forget.
        with contextlib.suppress(KeyError):
            self._lag.remove(topic, str(partition))

    def set_in_flight(self, n: int) -> None:
        """Set the number of events polled but not yet committed."""
        self._in_flight.set(n)

    def set_model_info(self, name: str, version: str, provider: str) -> None:
        """Publish that model ``name`` runs at ``version`` on ``provider``; replaces older info.

        >>> m = Metrics()
        >>> m.set_model_info("lesion-cnn", "1.0.0", "CUDAExecutionProvider")
        >>> m.set_model_info("lesion-cnn", "1.0.0", "CPUExecutionProvider")  # fell back
        >>> b"CUDAExecutionProvider" in m.render()
        False
        """
        with self._models_lock:  # remove-then-set must not interleave with another update
            old = self._models.get(name)
            if old is not None and old != (version, provider):
                self._model_info.remove(name, *old)
            self._models[name] = (version, provider)
            self._model_info.labels(name, version, provider).set(1)

    def set_gpu_required(self, required: bool) -> None:
        """Publish whether the configuration requires CUDA (for the OnCPUWhileGPURequired alert)."""
        self._gpu_required.set(1 if required else 0)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness, shared between the consumer loop and the HTTP server.

    Alive means two things. The loop called :meth:`beat` recently (a wedged loop stops beating).
    And it is not stalled: while records wait (:meth:`set_backlog` above zero), some offset was
    committed (:meth:`progress`) within ``stall_timeout_s``; a partition stuck behind a broker
    that refuses every produce, or a model that never returns, turns ``/healthz`` red with the
    reason, so an orchestrator restarts the worker. Ready means the worker has its models and
    partitions and can take traffic. ``clock`` is injectable so tests need not sleep.

    >>> now = [100.0]
    >>> h = Health(clock=lambda: now[0], stall_timeout_s=60)
    >>> h.alive(), h.ready()
    (True, False)
    >>> now[0] += 31
    >>> h.status()
    (False, 'the loop has not polled for 31 s')
    >>> h.beat(); h.set_ready(True)
    >>> h.alive(), h.ready()
    (True, True)
    >>> h.set_backlog(12); h.note_problem("KafkaTimeoutError"); now[0] += 61; h.beat()
    >>> h.status()[1]  # doctest: +ELLIPSIS
    'stalled: no offset committed for 61 s while 12 records wait (last error: ...)'

    >>> h.progress(); h.status()
    (True, 'ok')
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, stall_timeout_s: float = 120.0
    ) -> None:
        self._clock = clock
        self._stall_timeout_s = stall_timeout_s
        self._lock = threading.Lock()
        # Start counted as a beat, so a worker is alive while it loads models and joins the group.
        self._last_beat = self._last_progress = clock()
        self._ready = False
        self._backlog = 0
        self._problem = ""
        self._waiting_on = ""

    def beat(self) -> None:
        """Note that the loop is making progress (call it on every poll)."""
        now = self._clock()
        with self._lock:
            self._last_beat = now

    def progress(self) -> None:
        """Note that offsets were committed: the partitions move."""
        now = self._clock()
        with self._lock:
            self._last_progress = now
            self._problem = ""

    def set_backlog(self, records: int) -> None:
        """How many records wait: in flight plus the assigned partitions' lag. While it is zero
        nothing can be stalled (an idle worker commits nothing and is healthy)."""
        now = self._clock()
        with self._lock:
            if self._backlog == 0 and records > 0:
                self._last_progress = now  # waiting starts now, not at the last commit
            self._backlog = max(0, records)

    def note_problem(self, text: str) -> None:
        """The last error that keeps offsets from moving (shown while stalled)."""
        with self._lock:
            self._problem = " ".join(text.split())[:200]

    def set_waiting_on(self, text: str) -> None:
        """Say that progress waits on something outside ("" when no longer), such as an export
        destination that is down: ``/healthz`` stays 200 (restarting would not bring it back)
        and says so in its body, the stall rule is suspended, and ``/readyz`` answers 503."""
        now = self._clock()
        with self._lock:
            if self._waiting_on and not text:
                self._last_progress = now  # the stall clock restarts when the wait ends
            self._waiting_on = " ".join(text.split())[:200]

    def set_ready(self, ready: bool) -> None:
        """Say whether the worker can take traffic."""
        with self._lock:
            self._ready = ready

    def status(self, max_silence_s: float = 30.0) -> tuple[bool, str]:
        """(alive, why): why is 'ok' or the reason it is not."""
        now = self._clock()
        with self._lock:
            silent = now - self._last_beat
            if silent > max_silence_s:
                return False, f"the loop has not polled for {silent:.0f} s"
            if self._waiting_on:
                return True, f"waiting: {self._waiting_on}"
            stuck = now - self._last_progress
            if self._backlog > 0 and stuck > self._stall_timeout_s:
                why = f" (last error: {self._problem})" if self._problem else ""
                return False, (
                    f"stalled: no offset committed for {stuck:.0f} s while {self._backlog} "
                    f"records wait{why}"
                )
            return True, "ok"

    def alive(self, max_silence_s: float = 30.0) -> bool:
        """Whether the loop beats and is not stalled (see :meth:`status`)."""
        return self.status(max_silence_s)[0]

    def ready(self) -> bool:
        """Whether the worker said it can take traffic (and waits on nothing outside)."""
        with self._lock:
            return self._ready and not self._waiting_on


class MetricsServer:
    """A running metrics/health HTTP server; :attr:`port` is the bound port, :meth:`close` stops it.

    Also a context manager.

    >>> with serve(Metrics(), Health(), "127.0.0.1", 0) as srv:
    ...     srv.port > 0
    True
    """

    def __init__(self, httpd: http.server.ThreadingHTTPServer) -> None:
        self._httpd = httpd
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"scanstream-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        """Stop serving and release the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Rendered(Protocol):
    """What ``/metrics`` serves: the worker's :class:`Metrics` or the exporter's own."""

    def render(self) -> bytes: ...


def serve(
    metrics: Rendered, health: Health, host: str, port: int, *, max_silence_s: float = 30.0
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread.

    ``port`` 0 binds an ephemeral port (see :attr:`MetricsServer.port`). ``/healthz`` answers 503
    with the reason in the body once the loop has not beaten for ``max_silence_s`` seconds or is
    stalled (see :class:`Health`).

    >>> import http.client
    >>> with serve(Metrics(), Health(), "127.0.0.1", 0) as srv:
    ...     conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    ...     conn.request("GET", "/readyz")
    ...     resp = conn.getresponse()
    ...     (resp.status, resp.read()), conn.close()
    ((503, b'not ready\\n'), None)
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "scanstream"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, why = health.status(max_silence_s)
                self._reply(200 if ok else 503, why.encode() + b"\n")
            elif path == "/readyz":
                ok = health.ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every few seconds would drown the worker's own logs on stderr.
            pass

    httpd = http.server.ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return MetricsServer(httpd)
