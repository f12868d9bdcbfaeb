"""worker.metrics: the series, the HTTP endpoints over real sockets, promtool on a real scrape."""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tooling import require_tool

import worker
from worker.errors import REASONS
from worker.metrics import STAGES, Health, Metrics, MetricsServer, serve

SERIES = (
    "scanstream_e2e_latency_seconds",
    "scanstream_stage_duration_seconds",
    "scanstream_events",  # the parser strips _total from counter family names
    "scanstream_alerts",
    "scanstream_batch_size",
    "scanstream_consumer_lag",
    "scanstream_in_flight_events",
    "scanstream_model_info",
    "scanstream_gpu_required",
    "scanstream_build_info",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(server: MetricsServer, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
    return Health(clock=clock)


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.observe_e2e(0.02)
    for stage in STAGES:
        m.observe_stage(stage, 0.001)
    m.count_event("finding")
    m.count_event("dead_letter", "truncated")
    m.count_alert("critical")
    m.observe_batch(8)
    m.set_lag("scans.events", 2, 1500)
    m.set_in_flight(3)
    m.set_model_info("lesion-cnn", "1.0.0", "CUDAExecutionProvider")
    m.set_gpu_required(True)
    return m


@pytest.fixture
def server(metrics: Metrics, health: Health) -> Iterator[MetricsServer]:
    srv = serve(metrics, health, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_serves_every_series(server: MetricsServer) -> None:
    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert set(SERIES) <= families
    values = samples(body.decode())
    assert values[("scanstream_events_total", frozenset({("outcome", "finding"), ("reason", "")}))]
    lag = ("scanstream_consumer_lag", frozenset({("topic", "scans.events"), ("partition", "2")}))
    assert values[lag] == 1500
    assert values[("scanstream_in_flight_events", frozenset())] == 3
    assert values[("scanstream_gpu_required", frozenset())] == 1
    assert values[("scanstream_batch_size_bucket", frozenset({("le", "8.0")}))] == 1
    build = [k for k in values if k[0] == "scanstream_build_info"]
    assert len(build) == 1 and ("version", worker.__version__) in build[0][1]


def test_query_string_is_ignored(server: MetricsServer) -> None:
    assert get(server, "/metrics?x=1")[0] == 200


def test_healthz_flips_with_the_heartbeat(
    server: MetricsServer, health: Health, clock: Clock
) -> None:
    status, _, body = get(server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    clock.now += 31
    assert get(server, "/healthz")[0] == 503
    health.beat()
    assert get(server, "/healthz")[0] == 200


def test_readyz_flips_with_set_ready(server: MetricsServer, health: Health) -> None:
    assert get(server, "/readyz")[0] == 503
    health.set_ready(True)
    assert get(server, "/readyz")[0] == 200
    health.set_ready(False)
    assert get(server, "/readyz")[0] == 503


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metricz")[0] == 404


def test_requests_are_not_logged(server: MetricsServer, capfd: pytest.CaptureFixture[str]) -> None:
    for path in ("/metrics", "/healthz", "/nope"):
        get(server, path)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_port_zero_binds_an_ephemeral_port_and_close_frees_it(
    metrics: Metrics, health: Health
) -> None:
    srv = serve(metrics, health, "127.0.0.1", 0)
    port = srv.port
    assert port > 0
    assert get(srv, "/healthz")[0] == 200
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass


def test_custom_silence_window(metrics: Metrics, clock: Clock) -> None:
    health = Health(clock=clock)
    with serve(metrics, health, "127.0.0.1", 0, max_silence_s=5.0) as srv:
        clock.now += 6
        assert get(srv, "/healthz")[0] == 503


def test_promtool_accepts_a_real_scrape(server: MetricsServer) -> None:
    tool = require_tool("promtool", "prometheus")
    _, _, body = get(server, "/metrics")
    result = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_own_registry_not_the_global_one() -> None:
    Metrics()
    Metrics()  # a second instance would raise "Duplicated timeseries" on a shared registry
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("scanstream_")]


def test_histogram_buckets() -> None:
    text = Metrics().render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def bounds(name: str) -> list[float]:
        return sorted(
            {float(s.labels["le"]) for s in families[name].samples if s.name.endswith("_bucket")}
        )

    e2e = bounds("scanstream_e2e_latency_seconds")
    assert e2e[0] == 0.001 and e2e[-2] == 10.0 and 0.05 in e2e
    stage = bounds("scanstream_stage_duration_seconds")
    assert stage[0] == 0.0001 and stage[-2] == 10.0
    assert bounds("scanstream_batch_size")[:-1] == [1, 2, 4, 8, 16, 32, 64, 128]


def test_known_label_values_exist_before_the_first_event() -> None:
    values = samples(Metrics().render().decode())
    for reason in REASONS:
        key = (
            "scanstream_events_total",
            frozenset({("outcome", "dead_letter"), ("reason", reason)}),
        )
        assert values[key] == 0
    for stage in STAGES:
        assert (
            values[("scanstream_stage_duration_seconds_count", frozenset({("stage", stage)}))] == 0
        )


def test_labels_carry_no_identifiers(metrics: Metrics) -> None:
    allowed = {"stage", "outcome", "reason", "severity", "topic", "partition", "le"}
    allowed |= {"name", "version", "provider", "python", "cause"}
    names = {label for f in metrics.registry.collect() for s in f.samples for label in s.labels}
    assert names <= allowed


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.observe_stage("decoding", 0.1),
        lambda m: m.count_event("findings"),
        lambda m: m.count_event("finding", "truncated"),
        lambda m: m.count_event("dead_letter", "1.2.840.113619.2.55"),
        lambda m: m.count_event("dead_letter"),
        lambda m: m.count_alert("urgent"),
    ],
)
def test_typos_raise(call: Callable[[Metrics], object]) -> None:
    with pytest.raises(ValueError):
        call(Metrics())


def test_model_info_replaces_a_changed_provider() -> None:
    m = Metrics()
    m.set_model_info("lesion-cnn", "1.0.0", "CUDAExecutionProvider")
    m.set_model_info("edge-svm", "1.0.0", "CPUExecutionProvider")
    m.set_model_info("lesion-cnn", "1.0.0", "CPUExecutionProvider")
    info = [
        dict(labels) for name, labels in samples(m.render().decode()) if name.endswith("model_info")
    ]
    assert sorted((i["name"], i["provider"]) for i in info) == [
        ("edge-svm", "CPUExecutionProvider"),
        ("lesion-cnn", "CPUExecutionProvider"),
    ]


def test_lag_of_a_revoked_partition_is_removed() -> None:
    m = Metrics()
    m.set_lag("scans.events", 0, 10)
    m.set_lag("scans.events", 1, 20)
    m.remove_lag("scans.events", 0)
    lags = [dict(k[1]) for k in samples(m.render().decode()) if k[0] == "scanstream_consumer_lag"]
    assert lags == [{"topic": "scans.events", "partition": "1"}]


def test_negative_e2e_latency_is_clamped() -> None:
    m = Metrics()
    m.observe_e2e(-0.5)  # producer clock ahead of ours
    values = samples(m.render().decode())
    assert values[("scanstream_e2e_latency_seconds_bucket", frozenset({("le", "0.001")}))] == 1
    assert values[("scanstream_e2e_latency_seconds_sum", frozenset())] == 0
