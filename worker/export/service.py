"""Start-up of ``scanstream export``: fail fast on what can be checked, then run the loop."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from worker import __version__
from worker.errors import ConfigError
from worker.export.destinations import open_destination, parse_destination
from worker.export.loop import Exporter, export_group
from worker.export.metrics import ExportMetrics
from worker.metrics import Health, serve
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings

log = logging.getLogger(__name__)


def check_export_settings(settings: Settings) -> str:
    """The destination's loggable name; ConfigError naming what to set when it cannot run."""
    if not settings.sr_topic:
        raise ConfigError(
            "scanstream export reads the SRs the worker writes: set SCANSTREAM_SR_TOPIC (the "
            "worker's too, e.g. scans.sr)"
        )
    if not settings.export_to:
        raise ConfigError(
            "set SCANSTREAM_EXPORT_TO to the destination: dicom://AET@host:port (C-STORE) or "
            "http(s)://host[:port]/dicom-web (STOW-RS)"
        )
    return parse_destination(settings.export_to).name


def run_export(settings: Settings, drain: bool = False) -> int:
    """Run the exporter until SIGTERM/SIGINT (or, with ``drain``, until the topic is sent)."""
    name = check_export_settings(settings)
    assert settings.sr_topic  # checked above
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=True)
    kafka_clients.wait_for_broker(bootstrap, settings)
    kafka_clients.ensure_topics(bootstrap, settings, only=(settings.sr_topic, settings.dlq_topic))
    metrics, health = ExportMetrics(name), Health(stall_timeout_s=settings.stall_timeout_s)
    destination = open_destination(settings)
    try:
        exporter = Exporter(settings, bootstrap, destination, metrics, health)
        server = None
        if settings.metrics_port:
            server = serve(metrics, health, settings.metrics_host, settings.metrics_port)

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current SR and leaving the group", signum)
            exporter.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        log.info(
            "exporter started",
            extra={
                "fields": {
                    "version": __version__,
                    "bootstrap": bootstrap,
                    "topic": settings.sr_topic,
                    "destination": name,
                    "group": export_group(settings, name),
                }
            },
        )
        try:
            exporter.run(drain=drain)
        finally:
            if server is not None:
                server.close()
    finally:
        destination.close()
    log.info(
        "exporter stopped",
        extra={
            "fields": {
                "consumed": exporter.stats.consumed,
                "sent": exporter.sent,
                "dead_letters": exporter.stats.dead_letters,
                "by_reason": exporter.stats.by_reason,
            }
        },
    )
    return 0
