"""``scanstream bench --stage gateway`` at a smoke size: both receivers get every instance."""

from __future__ import annotations

import os
import shutil

import pytest

from worker.bench import BenchError
from worker.bench import gateway as bench_gateway_module
from worker.bench.gateway import bench_gateway
from worker.settings import Settings

pytestmark = pytest.mark.integration

_DCMTK = shutil.which("storescu") is not None and shutil.which("storescp") is not None


@pytest.mark.skipif(
    not _DCMTK and not os.environ.get("CI"), reason="dcmtk's storescu/storescp are not installed"
)
@pytest.mark.timeout(180)
def test_gateway_stage_counts_every_instance_on_both_receivers(kafka_bootstrap: str) -> None:
    settings = Settings.from_env({}, bootstrap_servers=kafka_bootstrap)
    result = bench_gateway(settings, kafka_bootstrap, instances=5)
    for key in ("stage", "instances", "gateway_per_s", "storescp_per_s", "ratio"):
        assert key in result, key
    assert result["stage"] == "gateway"
    assert result["instances"] == 5
    assert result["gateway_stored"] == result["events_on_topic"] == 5
    assert result["storescp_files"] == 5


def test_missing_dcmtk_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gateway_module.shutil, "which", lambda name: None)
    with pytest.raises(BenchError, match=r"storescu and storescp .*apt-get install dcmtk"):
        bench_gateway(Settings.from_env({}), "127.0.0.1:1", instances=1)
