"""External tools the tests need (Debian packages that .ci/run installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_tool(name: str, package: str) -> str:
    """The tool's path. Missing on CI (``CI`` set) is a failure: .ci/run should have installed
    it; missing elsewhere skips the test with the install command."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing on CI: .ci/run must install the {package} package")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """(the ``Error`` lines dciodvfy (Debian dicom3tools) prints for the file, its whole output)."""
    exe = require_tool("dciodvfy", "dicom3tools")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output
