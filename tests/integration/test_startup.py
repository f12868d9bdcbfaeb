"""Start-up against the real broker fails fast, with a message that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_a_topic_that_cannot_be_created_fails_start(kafka_bootstrap: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCANSTREAM_EVENTS_TOPIC": "not a valid topic name!",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--drain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot create or list the topics" in proc.stderr
    assert "not a valid topic name!" in proc.stderr and "Traceback" not in proc.stderr
