"""``scanstream gateway``: the C-STORE SCP, the study-complete announcer (and STOW-RS), run
together until a signal stops them.

Start fails fast like the worker's: the broker and its security settings are probed, the events
and studies topics made sure of, before the port is opened. On SIGTERM the port closes first;
associations in progress finish (each instance still waits for its ack), then the producer
flushes and closes.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from worker.gateway.durable import DurablePublisher, NotDurable
from worker.gateway.scp import StoreSCP
from worker.gateway.studies import StudyTracker
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import event_headers
from worker.settings import Settings

log = logging.getLogger(__name__)


class Gateway:
    """The running gateway: ``start()`` returns the C-STORE port; ``stop()`` ends it all."""

    def __init__(self, settings: Settings, bootstrap: str, producer: Any = None) -> None:
        self.settings = settings
        self.publisher = DurablePublisher(settings, bootstrap, producer)
        self.tracker = StudyTracker(settings.study_quiet_s)
        self.scp = StoreSCP(settings, self.publisher, self.tracker)
        self.http: Any = None
        self._stop = threading.Event()
        self._announcer = threading.Thread(target=self._announce, name="studies", daemon=True)

    def start(self) -> int:
        if self.settings.gateway_http_port:  # first: a bad setting leaves nothing running
            from worker.gateway.stow import serve_stow

            self.http = serve_stow(self.settings, self.publisher, self.tracker)
        try:
            port = self.scp.start()
        except BaseException:
            if self.http is not None:
                self.http.close()
            raise
        self._announcer.start()
        return port

    def stop(self) -> None:
        self._stop.set()
        if self.http is not None:
            self.http.close()
        self.scp.stop()
        if self._announcer.is_alive():
            self._announcer.join(timeout=self.settings.gateway_ack_timeout_s + 5)
        self.publisher.close()

    def announce_due(self) -> int:
        """Publish the records of studies gone quiet; returns how many were acknowledged."""
        done = 0
        for record in self.tracker.due():
            deadline = time.monotonic() + self.settings.gateway_ack_timeout_s
            uid = record["study_instance_uid"]
            headers = event_headers(f"{uid}#{record['revision']}", time.time(), "application/json")
            try:
                self.publisher.send(
                    self.settings.studies_topic,
                    uid.encode(),
                    json.dumps(record).encode(),
                    [*headers, ("schema", b"study-complete.v1")],
                    deadline,
                )
            except NotDurable as exc:
                log.warning("study-complete for %s not acknowledged, retried: %s", uid, exc)
                continue
            self.tracker.announced(record)
            done += 1
            log.info(
                "study complete",
                extra={
                    "fields": {
                        "study": uid,
                        "revision": record["revision"],
                        "instances": record["instance_count"],
                    }
                },
            )
        return done

    def _announce(self) -> None:
        tick = min(1.0, self.settings.study_quiet_s / 4)
        while not self._stop.wait(tick):
            try:
                self.announce_due()
            except Exception:  # a bug here must not stop the announcer
                log.exception("internal error announcing studies")


def run_gateway(settings: Settings) -> int:
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=True)
    kafka_clients.wait_for_broker(bootstrap, settings)
    # Only the topics it writes: the gateway's principal need not Describe the worker's outputs.
    kafka_clients.ensure_topics(
        bootstrap, settings, only=(settings.events_topic, settings.studies_topic)
    )
    gateway = Gateway(settings, bootstrap)
    port = gateway.start()
    stopped = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info(
        "gateway started",
        extra={
            "fields": {
                "ae_title": settings.gateway_ae_title,
                "port": port,
                "bootstrap": bootstrap,
                "http_port": settings.gateway_http_port,
            }
        },
    )
    print(
        f"gateway {settings.gateway_ae_title} listening on {settings.gateway_host}:{port} "
        f"(C-STORE) -> {settings.events_topic} at {bootstrap}",
        flush=True,
    )
    try:
        stopped.wait()
    finally:
        gateway.stop()
    log.info("gateway stopped", extra={"fields": {"stored": gateway.scp.stored}})
    return 0
