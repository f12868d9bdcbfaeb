"""A real Prometheus (Debian's package) scrapes a worker under load; /readyz tells the truth."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tooling import require_tool

from worker.broker import free_port
from worker.metrics import serve
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import publish_bytes
from worker.runtime.service import start_worker
from worker.settings import Settings

pytestmark = pytest.mark.integration


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_readyz_then_real_prometheus_computes_p99(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    binary = require_tool("prometheus", "prometheus")
    settings = isolated_settings
    assert settings.bootstrap_servers
    worker, metrics, health = start_worker(settings, settings.bootstrap_servers)
    server = serve(metrics, health, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: scanstream\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        assert http_status(f"{base}/readyz") == 503  # no partitions assigned yet
        assert http_status(f"{base}/healthz") == 200
        thread.start()
        deadline = time.monotonic() + 60
        while http_status(f"{base}/readyz") != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.2)
        producer = kafka_clients.producer(settings.bootstrap_servers, settings)
        for i in range(120):  # paced load over ~6 s so that several scrapes see it
            publish_bytes(producer, settings, encode_ct(ct_slice(i, 96), instance=i))
            time.sleep(0.05)
        producer.flush()
        producer.close()
        query = (
            "histogram_quantile(0.99, sum by (le) "
            "(rate(scanstream_e2e_latency_seconds_bucket[20s])))"
        )
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        value = math.nan
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    result = json.load(response)["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    if math.isfinite(value):
                        break
            except (urllib.error.URLError, ConnectionError):
                pass  # Prometheus still starting
            time.sleep(1)
        print(f"p99 end-to-end latency from Prometheus: {value * 1e3:.1f} ms")
        assert math.isfinite(value) and value > 0
        # The worker's own exposition, after all the traffic, passes promtool's lint too.
        done = b'scanstream_events_total{outcome="finding",reason=""} 120.0'
        deadline = time.monotonic() + 60
        body = b""
        while done not in body and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
                body = response.read()
            time.sleep(0.2)
        assert done in body
        lint = subprocess.run(
            [require_tool("promtool", "prometheus"), "check", "metrics"],
            input=body,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        worker.stop()
        thread.join(timeout=60)
        prom.terminate()
        prom.wait(timeout=30)
        server.close()
