"""The demo's gateway leg: both DICOM clients it may use store the samples through the gateway."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.demo_gateway import GATEWAY_SAMPLES, send_pynetdicom, send_storescu
from worker.gateway.service import Gateway
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

pytestmark = pytest.mark.integration

_STORESCU = shutil.which("storescu")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "client",
    [
        pytest.param(
            "storescu", marks=pytest.mark.skipif(_STORESCU is None, reason="no dcmtk storescu")
        ),
        "pynetdicom",
    ],
)
def test_demo_clients_store_the_samples(
    client: str, isolated_settings: Settings, kafka_bootstrap: str, pydicom_files: Path
) -> None:
    settings = isolated_settings.replace(gateway_port=0)
    kafka_clients.ensure_topics(kafka_bootstrap, settings, also=(settings.studies_topic,))
    paths = [pydicom_files / name for name in GATEWAY_SAMPLES]
    gateway = Gateway(settings, kafka_bootstrap)
    try:
        port = gateway.start()
        ae = settings.gateway_ae_title
        if client == "storescu":
            assert _STORESCU is not None
            statuses = send_storescu(_STORESCU, port, ae, paths)
        else:
            statuses = send_pynetdicom(port, ae, paths)
    finally:
        gateway.stop()
    assert statuses == dict.fromkeys(paths, "Success")
    assert gateway.scp.stored == len(paths)
