"""External tools the tests need (Debian packages that .ci/run installs)."""

from __future__ import annotations

import os
import shutil

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
