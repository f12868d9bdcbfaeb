"""docker-compose.yml is valid for users who have Docker (checked with Debian's docker-compose)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose missing on CI: .ci/run should have installed it")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
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
