"""Image analysis: filtering, windowing, edges and the per-frame feature vector.

Everything works on float32 frames in modality units (HU for CT), never squeezed to 8 bits.
:func:`analyze_frame` runs the whole stage on one frame; the pure functions it is built from are
exported for tests and reuse. :data:`FEATURE_NAMES` is the frozen order of the SVM's input.

>>> import numpy as np
>>> from worker.phantoms import ct_slice
>>> result = analyze_frame(ct_slice(seed=3, size=128), "CT")
>>> dict(zip(FEATURE_NAMES, result.features.tolist()))["edge_density"] > 0
True
"""

from worker.imaging.config import DENOISERS, Denoise, ImagingConfig
from worker.imaging.edges import (
    CANNY_METHODS,
    CannyMethod,
    EdgeDetection,
    EdgeRegions,
    Gradient,
    auto_thresholds,
    canny,
    canny_auto,
    detect_edges,
    edge_indices,
    edge_regions,
    orientation,
    sobel,
    thresholds_from_percentiles,
)
from worker.imaging.feature_vector import (
    FEATURE_NAMES,
    cooccurrence,
    features,
    glcm_props,
    mean_std,
    quantise,
    texture_row_step,
)
from worker.imaging.filters import (
    as_float32,
    gaussian_filter,
    gaussian_ksize,
    mean_filter,
    median_filter,
)
from worker.imaging.pipeline import (
    STAGES,
    FrameAnalysis,
    analyze_frame,
    analyze_frame_stages,
    denoise,
)
from worker.imaging.thumbnail import (
    EDGE_BOX_BGR,
    SALIENCY_BOX_BGR,
    edge_thumbnail,
    overlay_thumbnail,
    thumbnail_path,
    write_thumbnail,
)
from worker.imaging.window import (
    CT_WINDOWS,
    DEFAULT_PERCENTILES,
    MODALITY_PERCENTILES,
    default_window,
    percentile_window,
    window,
)

__all__ = [
    "CANNY_METHODS",
    "CT_WINDOWS",
    "DEFAULT_PERCENTILES",
    "DENOISERS",
    "EDGE_BOX_BGR",
    "FEATURE_NAMES",
    "MODALITY_PERCENTILES",
    "SALIENCY_BOX_BGR",
    "STAGES",
    "CannyMethod",
    "Denoise",
    "EdgeDetection",
    "EdgeRegions",
    "FrameAnalysis",
    "Gradient",
    "ImagingConfig",
    "analyze_frame",
    "analyze_frame_stages",
    "as_float32",
    "auto_thresholds",
    "canny",
    "canny_auto",
    "cooccurrence",
    "default_window",
    "denoise",
    "detect_edges",
    "edge_indices",
    "edge_regions",
    "edge_thumbnail",
    "features",
    "gaussian_filter",
    "gaussian_ksize",
    "glcm_props",
    "mean_filter",
    "mean_std",
    "median_filter",
    "orientation",
    "overlay_thumbnail",
    "percentile_window",
    "quantise",
    "sobel",
    "texture_row_step",
    "thresholds_from_percentiles",
    "thumbnail_path",
    "window",
    "write_thumbnail",
]
