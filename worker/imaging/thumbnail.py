"""A small PNG of an edge map, written as evidence next to a finding.

>>> import numpy as np
>>> e = np.zeros((512, 256), np.uint8); e[100, :] = 255
>>> t = edge_thumbnail(e, 128)
>>> t.shape, int(t.max()), int((t > 0).sum())
((128, 64), 255, 64)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt


def edge_thumbnail(edge_map: npt.NDArray[np.uint8], size: int = 128) -> npt.NDArray[np.uint8]:
    """``edge_map`` shrunk so its longer side is ``size`` (never enlarged), aspect kept.

    A thumbnail pixel is 255 if any edge pixel falls in its area, so one-pixel edges survive
    the shrinking instead of fading to grey.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    h, w = edge_map.shape
    scale = min(1.0, size / max(h, w))
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(edge_map, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return np.where(small > 0, 255, 0).astype(np.uint8)


def thumbnail_path(folder: str | os.PathLike[str], event_id: str, sop_uid: str | None) -> Path:
    """Where the thumbnail of one instance goes: a hash of the event id and SOPInstanceUID.

    Never a value from inside the DICOM as a file name: a UID of ``../../x`` or one with a NUL
    byte must not choose the path, so the name is a SHA-256 prefix, always inside ``folder``.
    The same instance of the same event always gets the same name (a replay overwrites it).

    >>> thumbnail_path("/t", "e1", "../../etc/x").parent
    PosixPath('/t')
    >>> len(thumbnail_path("/t", "e1", None).name)
    36
    """
    digest = hashlib.sha256(f"{event_id}\0{sop_uid or ''}".encode("utf-8", "replace")).hexdigest()
    return Path(folder) / f"{digest[:32]}.png"


def write_thumbnail(
    edge_map: npt.NDArray[np.uint8], path: str | os.PathLike[str], size: int = 128
) -> None:
    """Write :func:`edge_thumbnail` as a PNG at ``path`` (parents created, replaced atomically).

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "sub" / "edges.png"
    ...     write_thumbnail(np.eye(300, dtype=np.uint8) * 255, p, size=64)
    ...     p.read_bytes()[:4]
    b'\\x89PNG'
    """
    ok, buf = cv2.imencode(".png", edge_thumbnail(edge_map, size))
    if not ok:
        raise OSError(f"could not encode a PNG thumbnail for {path}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
