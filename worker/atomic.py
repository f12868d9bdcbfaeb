"""Files that readers never see half written: write beside the target, then rename over it.

>>> import pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     p = write_atomically(pathlib.Path(d) / "sub" / "page.html", b"<p>hi</p>", mode=0o644)
...     p.read_bytes(), oct(p.stat().st_mode & 0o777)
(b'<p>hi</p>', '0o644')
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` at ``path`` (parents created) through a temporary file in the same folder
    and a rename, so a reader sees the old file or the new one, never part of it. The file is
    0600 (``tempfile.mkstemp``'s) unless ``mode`` says otherwise. Returns the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
