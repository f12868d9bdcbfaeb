"""The evidence thumbnail with its two boxes: the strongest edge region and the saliency box,
scaled from frame pixels to the thumbnail, in two colours, checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from worker.imaging import (
    EDGE_BOX_BGR,
    SALIENCY_BOX_BGR,
    edge_thumbnail,
    overlay_thumbnail,
    write_thumbnail,
)

EDGE = list(EDGE_BOX_BGR)
SALIENCY = list(SALIENCY_BOX_BGR)


def outline(image: npt.NDArray[np.uint8], colour: list[int]) -> npt.NDArray[np.bool_]:
    return np.all(image == np.array(colour, np.uint8), axis=2)


def rectangle_mask(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The one-pixel outline of the inclusive rectangle (x0, y0)-(x1, y1)."""
    mask = np.zeros(shape, bool)
    mask[y0 : y1 + 1, [x0, x1]] = True
    mask[[y0, y1], x0 : x1 + 1] = True
    return mask


def test_the_colours_differ_in_hue_and_in_brightness() -> None:
    def luma(bgr: tuple[int, int, int]) -> float:
        b, g, r = bgr
        return 0.114 * b + 0.587 * g + 0.299 * r

    assert EDGE_BOX_BGR != SALIENCY_BOX_BGR
    assert abs(luma(EDGE_BOX_BGR) - luma(SALIENCY_BOX_BGR)) > 60
    assert (255, 255, 255) not in (EDGE_BOX_BGR, SALIENCY_BOX_BGR)  # edges are white


def test_both_boxes_are_drawn_scaled_to_the_thumbnail() -> None:
    edges = np.zeros((512, 512), np.uint8)  # thumbnail 128x128: a quarter
    edge_box = {"x": 40, "y": 80, "width": 200, "height": 100, "frame": 0}
    saliency_box = {"x": 256, "y": 300, "width": 128, "height": 64, "frame": 0}
    image = overlay_thumbnail(edges, 128, edge_bbox=edge_box, saliency_bbox=saliency_box)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    # 40..240 x 80..180 -> thumbnail columns 10..59, rows 20..44 (inclusive).
    np.testing.assert_array_equal(outline(image, EDGE), rectangle_mask((128, 128), 10, 20, 59, 44))
    # 256..384 x 300..364 -> columns 64..95, rows 75..90.
    np.testing.assert_array_equal(
        outline(image, SALIENCY), rectangle_mask((128, 128), 64, 75, 95, 90)
    )
    # Nothing else is lit: no edges here, and the insides are left alone.
    lit = image.any(axis=2)
    np.testing.assert_array_equal(lit, outline(image, EDGE) | outline(image, SALIENCY))


def test_a_non_square_frame_scales_both_axes_alike() -> None:
    edges = np.zeros((300, 600), np.uint8)  # thumbnail 64x128, scale 0.2133
    image = overlay_thumbnail(edges, 128, saliency_bbox=(300, 150, 150, 75))
    assert image.shape == (64, 128, 3)
    s = 128 / 600
    x0, y0 = int(300 * s), int(150 * s)
    x1, y1 = int(np.ceil(450 * s)) - 1, int(np.ceil(225 * s)) - 1
    np.testing.assert_array_equal(
        outline(image, SALIENCY), rectangle_mask((64, 128), x0, y0, x1, y1)
    )


def test_edges_stay_white_and_the_saliency_box_is_drawn_over_the_edge_box() -> None:
    edges = np.zeros((128, 128), np.uint8)
    edges[100, 5:120] = 255
    same = {"x": 10, "y": 10, "width": 20, "height": 20}
    image = overlay_thumbnail(edges, 128, edge_bbox=same, saliency_bbox=same)
    assert outline(image, SALIENCY).sum() == rectangle_mask((128, 128), 10, 10, 29, 29).sum()
    assert not outline(image, EDGE).any()
    assert image[100, 60].tolist() == [255, 255, 255]
    np.testing.assert_array_equal(image[:, :, 0] == 255, image.min(axis=2) == 255)


def test_a_tiny_box_stays_visible_and_a_box_at_the_border_is_clipped() -> None:
    edges = np.zeros((1024, 1024), np.uint8)  # an eighth
    image = overlay_thumbnail(
        edges,
        128,
        edge_bbox={"x": 500, "y": 500, "width": 1, "height": 1},
        saliency_bbox={"x": 1000, "y": 1000, "width": 200, "height": 200},
    )
    assert outline(image, EDGE).sum() == 1 and image[62, 62].tolist() == EDGE
    assert image[127, 127].tolist() == SALIENCY and image[125, 127].tolist() == SALIENCY


def test_boxes_of_other_frames_are_not_drawn_when_the_frame_is_given() -> None:
    edges = np.zeros((64, 64), np.uint8)
    edge_box = {"x": 0, "y": 0, "width": 10, "height": 10, "frame": 2}
    saliency_box = {"x": 20, "y": 20, "width": 10, "height": 10, "frame": 3}
    image = overlay_thumbnail(edges, 64, edge_box, saliency_box, frame=3)
    assert not outline(image, EDGE).any() and outline(image, SALIENCY).any()
    both = overlay_thumbnail(edges, 64, edge_box, saliency_box)  # no frame given: draw all
    assert outline(both, EDGE).any() and outline(both, SALIENCY).any()


def test_write_thumbnail_without_boxes_is_unchanged_and_with_boxes_is_colour(
    tmp_path: Path,
) -> None:
    edges = np.zeros((256, 256), np.uint8)
    edges[50:200, 120] = 255
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.png"
    write_thumbnail(edges, grey)  # the call the pipeline makes today
    on_disk = cv2.imread(str(grey), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(on_disk, edge_thumbnail(edges, 128))
    boxes = {
        "edge_bbox": {"x": 100, "y": 40, "width": 40, "height": 170, "frame": 0},
        "saliency_bbox": {"x": 8, "y": 8, "width": 64, "height": 64, "frame": 0},
    }
    write_thumbnail(edges, colour, size=128, frame=0, **boxes)  # type: ignore[arg-type]
    on_disk = cv2.imread(str(colour), cv2.IMREAD_UNCHANGED)
    assert on_disk.shape == (128, 128, 3)
    np.testing.assert_array_equal(on_disk, overlay_thumbnail(edges, 128, frame=0, **boxes))  # type: ignore[arg-type]
    assert on_disk[20, 50].tolist() == EDGE and on_disk[4, 4].tolist() == SALIENCY
    assert on_disk[60, 60].tolist() == [255, 255, 255]  # the edge column, 120 / 2


def test_a_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        overlay_thumbnail(np.zeros((8, 8), np.uint8), 0)
