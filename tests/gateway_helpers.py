"""Helpers for the gateway tests: the real ``scanstream gateway`` as a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from worker.settings import Settings


@contextmanager
def gateway_process(
    settings: Settings, port: int, log: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``scanstream gateway --port PORT`` with the broker and topic names of ``settings`` (and
    ``extra_env`` over them: a principal's login, say), output to ``log``; yields once it
    listens, killed at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANSTREAM_", "KAFKA_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
            "SCANSTREAM_EVENTS_TOPIC": settings.events_topic,
            "SCANSTREAM_FINDINGS_TOPIC": settings.findings_topic,
            "SCANSTREAM_ALERTS_TOPIC": settings.alerts_topic,
            "SCANSTREAM_DLQ_TOPIC": settings.dlq_topic,
            "SCANSTREAM_STUDIES_TOPIC": settings.studies_topic,
            **(extra_env or {}),
        }
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "gateway", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
