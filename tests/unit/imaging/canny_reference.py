"""The interpolated Canny in plain numpy and OpenCV: the oracle for the compiled kernel.

This was the production code before ``worker/imaging/kernels.py`` compiled the loop; it
is kept here, unchanged in its arithmetic, so the kernel is checked against an independent
formulation of the same algorithm rather than against itself.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from worker.imaging.edges import _regions

Result = tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp], int, tuple[int, int, int, int] | None]


def reference_canny(
    gx: npt.NDArray[np.float32],
    gy: npt.NDArray[np.float32],
    mag: npt.NDArray[np.float32],
    low: float,
    high: float,
) -> Result:
    """Edge map (0/255), flat edge indices, seeded component count, strongest box."""
    h, w = mag.shape
    edges = np.zeros((h, w), np.uint8)
    nothing: Result = (edges, np.zeros(0, np.intp), 0, None)
    if h < 3 or w < 3:
        return nothing
    cand = mag >= np.float32(low)
    cand[0, :] = cand[-1, :] = cand[:, 0] = cand[:, -1] = False
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return nothing
    fx, fy, fm = gx.ravel()[idx], gy.ravel()[idx], mag.ravel()[idx]
    ax, ay = np.abs(fx), np.abs(fy)
    mostly_y = ay >= ax
    sx = np.where(fx >= 0, 1, -1)
    sy = np.where(fy >= 0, w, -w)
    axial = np.where(mostly_y, sy, sx)
    diag = sx + sy
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.minimum(ax, ay) / np.maximum(ax, ay)
    flat = mag.ravel()
    a, b = flat[idx + axial], flat[idx + diag]
    ahead = a + frac * (b - a)
    a, b = flat[idx - axial], flat[idx - diag]
    behind = a + frac * (b - a)
    keep = (fm >= ahead) & (fm >= behind)
    idx, fm = idx[keep], fm[keep]
    if idx.size == 0:
        return nothing
    edges.ravel()[idx] = 1
    n, label_image = cv2.connectedComponents(edges, connectivity=8, ltype=cv2.CV_32S)
    labels = np.asarray(label_image, np.int32).ravel()[idx]
    seeded = np.zeros(n, bool)
    seeded[labels[fm >= np.float32(high)]] = True
    final = seeded[labels]
    edges.ravel()[idx] = np.where(final, 255, 0).astype(np.uint8)
    # The regions as before the kernel, and as the opencv method's edge_regions still does.
    regions = _regions(idx[final], labels[final], fm[final], w, n)
    return edges, idx[final], regions.components, regions.bbox
