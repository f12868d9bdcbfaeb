"""The pictures of a report: one sample's frame and edge map with the finding's boxes drawn, as
inline PNG data URIs. Pure functions over arrays (numpy and OpenCV; no files).

The boxes use the colours of the worker's thumbnails (:mod:`worker.imaging.thumbnail`): the
strongest edge region cyan, where the CNN looked red. A box is drawn only on the frame it lies
in. Images are shrunk so that their longer side is at most ``size`` pixels (never enlarged).

>>> import numpy as np
>>> w = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
>>> box = {"frame": 0, "x": 8, "y": 8, "width": 16, "height": 16}
>>> img = windowed_picture(w, edge_bbox=box, frame=0)
>>> img.shape, img[8, 8].tolist(), img[8, 40].tolist() == [img[8, 40, 0]] * 3
((64, 64, 3), [255, 255, 0], True)
>>> png_data_uri(img)[:22]
'data:image/png;base64,'
"""

from __future__ import annotations

import base64
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.thumbnail import Box, draw_boxes, overlay_thumbnail

#: Longer side, in pixels, of a picture in the report (the page shows it smaller or larger).
PICTURE_SIZE: Final = 256


def as_uint8(image: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """An image as 8 bits: uint8 as it is, floats (a windowed frame in [0, 1]) scaled by 255
    and clipped, NaN as 0.

    >>> as_uint8(np.array([[-1.0, 0.5, 2.0, np.nan]])).tolist()
    [[0, 128, 255, 0]]
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    scaled = np.nan_to_num(arr.astype(np.float32), nan=0.0) * 255.0 + 0.5
    out: npt.NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def _shrink(image: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    h, w = image.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale == 1.0:
        return image
    out = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(cv2.resize(image, out, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def windowed_picture(
    windowed: npt.ArrayLike,
    size: int = PICTURE_SIZE,
    edge_bbox: Box | None = None,
    saliency_bbox: Box | None = None,
    frame: int | None = None,
) -> npt.NDArray[np.uint8]:
    """A windowed frame (floats in [0, 1], or uint8) as a BGR picture with the boxes outlined.

    Boxes are in pixels of the frame; with ``frame`` set, a box of another frame is left out.
    """
    grey = as_uint8(windowed)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"a windowed frame must be a 2-D image, got shape {grey.shape}")
    small = _shrink(grey, size)
    out = np.ascontiguousarray(np.repeat(small[:, :, None], 3, axis=2))
    thickness = 2 if min(small.shape) >= 128 else 1
    draw_boxes(out, grey.shape, edge_bbox, saliency_bbox, frame, thickness)
    return out


def edge_picture(
    edge_map: npt.NDArray[np.uint8],
    size: int = PICTURE_SIZE,
    edge_bbox: Box | None = None,
    saliency_bbox: Box | None = None,
    frame: int | None = None,
) -> npt.NDArray[np.uint8]:
    """An edge map (0/255) as the worker's overlay thumbnail: edges kept visible when shrunk.

    >>> e = np.zeros((512, 512), np.uint8); e[10, :] = 255
    >>> edge_picture(e).shape
    (256, 256, 3)
    """
    edges = np.asarray(edge_map)
    if edges.ndim != 2:
        raise ValueError(f"an edge map must be a 2-D image, got shape {edges.shape}")
    edges = np.where(edges > 0, 255, 0).astype(np.uint8)
    return overlay_thumbnail(edges, size, edge_bbox, saliency_bbox, frame)


def picture(image: npt.ArrayLike, size: int = PICTURE_SIZE) -> npt.NDArray[np.uint8]:
    """Any grey (h, w) or BGR (h, w, 3) image, such as a thumbnail read back, shrunk to fit."""
    arr = as_uint8(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"not a grey or colour image: shape {arr.shape}")
    return _shrink(np.ascontiguousarray(arr), size)


def png_data_uri(image: npt.NDArray[Any]) -> str:
    """``image`` (uint8, grey or BGR) as a ``data:image/png;base64,...`` URI."""
    ok, buf = cv2.imencode(".png", as_uint8(image))
    if not ok:
        raise ValueError(f"could not encode a PNG of shape {image.shape}")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
