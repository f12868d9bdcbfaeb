"""`scanstream broker start|status|stop` with a real JVM: truthful status, nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def scanstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie awaiting its (re)parent's wait()."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_status_stop_leaves_no_broker(tmp_path: Path) -> None:
    env = {**os.environ, "SCANSTREAM_BROKER_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    status = scanstream("broker", "status", env=env)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")

    started = scanstream("broker", "start", env=env)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"pid (\d+)", started.stdout).group(1))  # type: ignore[union-attr]
    assert "bootstrap: 127.0.0.1:" in started.stdout
    try:
        again = scanstream("broker", "start", env=env)
        assert "already running" in again.stdout and f"pid {pid}" in again.stdout
        status = scanstream("broker", "status", env=env)
        assert status.returncode == 0 and f"pid {pid}" in status.stdout
    finally:
        stopped = scanstream("broker", "stop", env=env)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not running(pid), "the broker JVM is still there"
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b""
    status = scanstream("broker", "status", env=env)
    assert (status.returncode, status.stdout.strip()) == (3, "not running")


def test_cluster_id_starting_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One id in 64 starts with "-"; the storage tool must not take it for an option."""
    from worker import broker

    monkeypatch.setattr(broker, "_cluster_id", lambda: "-" + "A" * 21)
    info, started = broker.start(state_dir=tmp_path)
    try:
        assert started and broker.status(tmp_path) == info
    finally:
        broker.stop(state_dir=tmp_path)
    assert broker.status(tmp_path) is None
