"""Shared fixtures: the real local Kafka broker (once per session) and pydicom's test files."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from worker.runtime import kafka as kafka_clients
from worker.settings import Settings


class _InternalErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("internal error"):
            self.seen.append(message)


@pytest.fixture(autouse=True)
def no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """``internal_error`` is kept for our own bugs: any test in which the worker logs one fails,
    unless it is marked ``internal_error_expected`` (it injects a bug on purpose)."""
    handler = _InternalErrors()
    logger = logging.getLogger("worker")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.seen and request.node.get_closest_marker("internal_error_expected") is None:
        pytest.fail(f"the worker logged internal errors: {handler.seen[:3]}")


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
        # The broker's own log outlives its data (stop removes that), beside the other test
        # folders pytest keeps, so that a failure that looks like the broker's can be read.
        with contextlib.suppress(OSError):
            shutil.copy2(Path(info.data_dir, "server.log"), state.parent / f"{state.name}.log")
        broker.stop(state_dir=state)


@pytest.fixture
def isolated_settings(kafka_bootstrap: str) -> Settings:
    """Settings with topics and a group of their own, so tests never see each other's events."""
    run = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        {}, bootstrap_servers=kafka_bootstrap, worker_id=f"test-{run}"
    ).namespaced(f"t{run}")
    kafka_clients.ensure_topics(kafka_bootstrap, settings)
    return settings
