"""Shared fixtures: the real local Kafka broker (once per session) and pydicom's test files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    # Globbed directly: pydicom.data.get_testdata_files() may try to download.
    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Apache Kafka 4.x broker: $KAFKA_BOOTSTRAP_SERVERS, or a local one for the session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    from worker import broker

    state = tmp_path_factory.mktemp("broker")
    info, _ = broker.start(state_dir=state)
    try:
        yield info.bootstrap
    finally:
        broker.stop(state_dir=state)
