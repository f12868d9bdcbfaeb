"""docker-compose.yml is valid for users who have Docker (checked with Debian's docker-compose)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid() -> None:
    tool = require_tool("docker-compose", "docker-compose")
    proc = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for service in ("kafka:", "topic-init:", "worker:", "publisher:"):
        assert service in proc.stdout
