"""STOW-RS receiver (placeholder until it lands): refuses to start."""

from __future__ import annotations

from typing import Any

from worker.errors import ConfigError
from worker.gateway.durable import DurablePublisher
from worker.gateway.studies import StudyTracker
from worker.settings import Settings


def serve_stow(settings: Settings, publisher: DurablePublisher, tracker: StudyTracker) -> Any:
    raise ConfigError("SCANSTREAM_GATEWAY_HTTP_PORT: the STOW-RS receiver is not built yet")
