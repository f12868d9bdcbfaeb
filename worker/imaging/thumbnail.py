"""A small PNG of an edge map, written as evidence next to a finding, optionally with two boxes
drawn on it: the strongest edge region (:data:`EDGE_BOX_BGR`, cyan) and where the CNN looked
(:data:`SALIENCY_BOX_BGR`, red; :mod:`worker.inference.saliency`). The edges stay white, and
the two colours differ in hue and brightness, so they read apart in greyscale too.

>>> import numpy as np
>>> e = np.zeros((512, 256), np.uint8); e[100, :] = 255
>>> t = edge_thumbnail(e, 128)
>>> t.shape, int(t.max()), int((t > 0).sum())
((128, 64), 255, 64)
>>> o = overlay_thumbnail(e, 128, edge_bbox=(0, 96, 256, 8), saliency_bbox={"x": 64, "y": 256,
...                       "width": 128, "height": 128, "frame": 0})
>>> o.shape, o[24, 0].tolist(), o[64, 16].tolist()
((128, 64, 3), [255, 255, 0], [0, 0, 255])
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TypeAlias

import cv2
import numpy as np
import numpy.typing as npt

from worker.atomic import write_atomically

#: BGR colour of the strongest-edge box (cyan; luma 179).
EDGE_BOX_BGR: Final = (255, 255, 0)
#: BGR colour of the saliency box, where the CNN looked (red; luma 76). Drawn over the edge box.
SALIENCY_BOX_BGR: Final = (0, 0, 255)

#: A box in pixels of the full frame: ``{"x", "y", "width", "height"[, "frame"]}`` as in a
#: finding, or ``(x, y, width, height)`` as in :attr:`~worker.imaging.FrameAnalysis.edge_bbox`.
Box: TypeAlias = Mapping[str, int] | tuple[int, int, int, int]


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


def _box_corners(
    box: Box, scale: tuple[float, float], shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The box's inclusive corners ((x0, y0), (x1, y1)) on a thumbnail of ``shape`` (h, w), the
    frame scaled by ``scale`` (x, y); at least one thumbnail pixel, clipped to the image."""
    if isinstance(box, Mapping):
        x, y, w, h = (int(box[k]) for k in ("x", "y", "width", "height"))
    else:
        x, y, w, h = (int(v) for v in box)
    sx, sy = scale
    rows, cols = shape
    x0 = min(cols - 1, max(0, math.floor(x * sx)))
    y0 = min(rows - 1, max(0, math.floor(y * sy)))
    x1 = min(cols - 1, max(x0, math.ceil((x + max(1, w)) * sx) - 1))
    y1 = min(rows - 1, max(y0, math.ceil((y + max(1, h)) * sy) - 1))
    return (x0, y0), (x1, y1)


def overlay_thumbnail(
    edge_map: npt.NDArray[np.uint8],
    size: int = 128,
    edge_bbox: Box | None = None,
    saliency_bbox: Box | None = None,
    frame: int | None = None,
) -> npt.NDArray[np.uint8]:
    """:func:`edge_thumbnail` as a BGR image (h, w, 3) with the boxes outlined (one pixel wide).

    Boxes are in pixels of the full frame (that of ``edge_map``) and are scaled to the
    thumbnail, widened to whole thumbnail pixels so that a small box never vanishes. With
    ``frame`` set, a box whose ``"frame"`` is another frame is not drawn (a finding's boxes may
    lie in other frames than the thumbnail's). The saliency box is drawn last, over the other.

    >>> e = np.zeros((200, 100), np.uint8)
    >>> o = overlay_thumbnail(e, 50, saliency_bbox={"x": 10, "y": 10, "width": 20, "height": 20,
    ...                                             "frame": 3}, frame=3)
    >>> o.shape, o[2, 2].tolist(), o[7, 5].tolist(), o[4, 4].tolist(), o[8, 8].tolist()
    ((50, 25, 3), [0, 0, 255], [0, 0, 255], [0, 0, 0], [0, 0, 0])
    >>> int(overlay_thumbnail(e, 50, edge_bbox={"x": 0, "y": 0, "width": 5, "height": 5,
    ...                                         "frame": 1}, frame=0).max())
    0
    """
    small = edge_thumbnail(edge_map, size)
    out = np.ascontiguousarray(np.repeat(small[:, :, None], 3, axis=2), dtype=np.uint8)
    draw_boxes(out, edge_map.shape, edge_bbox, saliency_bbox, frame)
    return out


def draw_boxes(
    out: npt.NDArray[np.uint8],
    frame_shape: tuple[int, ...],
    edge_bbox: Box | None = None,
    saliency_bbox: Box | None = None,
    frame: int | None = None,
    thickness: int = 1,
) -> None:
    """Outline the boxes, in pixels of a frame of ``frame_shape`` (h, w), on ``out``: a BGR
    picture of that frame at its own size, edge box cyan, saliency box red (drawn last, over
    it), each widened to whole pixels of ``out`` (:func:`_box_corners`). With ``frame`` set, a
    box whose ``"frame"`` is another frame is not drawn.

    >>> out = np.zeros((10, 10, 3), np.uint8)
    >>> draw_boxes(out, (100, 100), edge_bbox={"x": 0, "y": 0, "width": 50, "height": 50})
    >>> out[0, 4].tolist(), out[5, 5].tolist()
    ([255, 255, 0], [0, 0, 0])
    """
    h, w = frame_shape[:2]
    rows, cols = out.shape[:2]
    scale = (cols / w, rows / h)
    for box, colour in ((edge_bbox, EDGE_BOX_BGR), (saliency_bbox, SALIENCY_BOX_BGR)):
        if box is None:
            continue
        if frame is not None and isinstance(box, Mapping) and box.get("frame", frame) != frame:
            continue
        top_left, bottom_right = _box_corners(box, scale, (rows, cols))
        cv2.rectangle(out, top_left, bottom_right, colour, thickness=thickness)


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
    edge_map: npt.NDArray[np.uint8],
    path: str | os.PathLike[str],
    size: int = 128,
    *,
    edge_bbox: Box | None = None,
    saliency_bbox: Box | None = None,
    frame: int | None = None,
) -> None:
    """Write the thumbnail as a PNG at ``path`` (parents created, replaced atomically).

    Without boxes it is :func:`edge_thumbnail` (greyscale); with either box it is
    :func:`overlay_thumbnail` (colour), the boxes and ``frame`` as there.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "sub" / "edges.png"
    ...     write_thumbnail(np.eye(300, dtype=np.uint8) * 255, p, size=64)
    ...     p.read_bytes()[:4]
    b'\\x89PNG'
    """
    if edge_bbox is None and saliency_bbox is None:
        image = edge_thumbnail(edge_map, size)
    else:
        image = overlay_thumbnail(edge_map, size, edge_bbox, saliency_bbox, frame)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode a PNG thumbnail for {path}")
    # Beside the target, then renamed: a reader never sees half a file.
    write_atomically(path, buf.tobytes())
