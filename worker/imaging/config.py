"""The knobs of the image-analysis stage, checked when built.

>>> ImagingConfig().denoise, ImagingConfig().gaussian_sigma
('gaussian', 1.0)
>>> ImagingConfig(denoise="median", median_ksize=4)
Traceback (most recent call last):
...
worker.errors.ConfigError: imaging median_ksize must be a positive odd integer, got 4
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from worker.errors import ConfigError
from worker.imaging.edges import CANNY_METHODS, CannyMethod
from worker.imaging.window import CT_WINDOWS

Denoise = Literal["gaussian", "median", "mean", "none"]
DENOISERS: Final[tuple[str, ...]] = ("gaussian", "median", "mean", "none")


@dataclass(frozen=True)
class ImagingConfig:
    """How a frame is denoised, windowed and edge-detected. Defaults suit CT and MR."""

    #: Denoising before the gradient: edges and gradient features see the denoised frame;
    #: intensity statistics and the window see the raw one.
    denoise: Denoise = "gaussian"
    gaussian_sigma: float = 1.0
    #: 0: derived from sigma (truncated at 4 sigma, as scipy.ndimage).
    gaussian_ksize: int = 0
    median_ksize: int = 3
    mean_ksize: int = 3
    #: Named HU window for CT (see ``worker.imaging.window.CT_WINDOWS``).
    ct_window: str = "soft_tissue"
    #: ``(center, width)`` in modality units for every modality; overrides the defaults.
    window: tuple[float, float] | None = None
    #: ``(low, high)`` percentiles for non-CT windows; None: per-modality defaults.
    percentiles: tuple[float, float] | None = None
    canny_method: CannyMethod = "interpolated"
    #: Automatic thresholds (see ``worker.imaging.edges.auto_thresholds``).
    canny_noise_k: float = 4.0
    canny_floor: float = 0.05
    canny_low_ratio: float = 0.4
    #: ``(low, high)`` in gradient-magnitude units; overrides the automatic thresholds.
    canny_thresholds: tuple[float, float] | None = None
    #: Longer side, in pixels, of the optional edge-map thumbnail.
    thumbnail_size: int = 128

    def __post_init__(self) -> None:
        if self.denoise not in DENOISERS:
            raise ConfigError(f"imaging denoise must be one of {DENOISERS}, got {self.denoise!r}")
        for name in ("median_ksize", "mean_ksize"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ConfigError(f"imaging {name} must be a positive odd integer, got {k}")
        if self.gaussian_ksize < 0 or (self.gaussian_ksize and self.gaussian_ksize % 2 == 0):
            raise ConfigError(
                f"imaging gaussian_ksize must be 0 (automatic) or positive and odd, "
                f"got {self.gaussian_ksize}"
            )
        if not (math.isfinite(self.gaussian_sigma) and self.gaussian_sigma > 0):
            raise ConfigError(f"imaging gaussian_sigma must be > 0, got {self.gaussian_sigma}")
        if self.ct_window not in CT_WINDOWS:
            raise ConfigError(
                f"imaging ct_window {self.ct_window!r} is unknown; use one of {sorted(CT_WINDOWS)}"
            )
        if self.window is not None and not (
            all(math.isfinite(v) for v in self.window) and self.window[1] > 0
        ):
            raise ConfigError(f"imaging window (center, width) needs width > 0, got {self.window}")
        if self.percentiles is not None and not (
            0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0
        ):
            raise ConfigError(
                f"imaging percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )
        if self.canny_method not in CANNY_METHODS:
            raise ConfigError(
                f"imaging canny_method must be one of {CANNY_METHODS}, got {self.canny_method!r}"
            )
        if not (self.canny_noise_k > 0 and 0 <= self.canny_floor <= 1):
            raise ConfigError("imaging canny_noise_k must be > 0 and canny_floor in [0, 1]")
        if not 0 < self.canny_low_ratio <= 1:
            raise ConfigError(
                f"imaging canny_low_ratio must lie in (0, 1], got {self.canny_low_ratio}"
            )
        if self.canny_thresholds is not None and not (
            0 <= self.canny_thresholds[0] <= self.canny_thresholds[1]
        ):
            raise ConfigError(
                f"imaging canny_thresholds must satisfy 0 <= low <= high, "
                f"got {self.canny_thresholds}"
            )
        if self.thumbnail_size < 8:
            raise ConfigError(f"imaging thumbnail_size must be >= 8, got {self.thumbnail_size}")
