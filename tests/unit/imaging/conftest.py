"""Shared test images: real DICOM slices shipped with pydicom, and the Shepp-Logan phantom.

pydicom's bundled files are read straight from its data directory: ``pydicom.data``'s look-up
helpers may try to download and hang without a network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.pixels import apply_rescale
from skimage.data import shepp_logan_phantom

_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# (file, modality): a 128x128 CT in HU (slope 1, intercept -1024), a 64x64 MR, a 300x484 MR.
DICOM_FILES = (("CT_small.dcm", "CT"), ("MR_small.dcm", "MR"), ("examples_overlay.dcm", "MR"))


def load_dicom(name: str) -> npt.NDArray[np.float32]:
    """A bundled DICOM slice in modality units (rescale applied), as float32."""
    ds = pydicom.dcmread(_TEST_FILES / name)
    return np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float32)


@pytest.fixture(scope="session")
def dicom_slices() -> dict[str, tuple[str, npt.NDArray[np.float32]]]:
    """name -> (modality, float32 frame in modality units)."""
    return {name: (modality, load_dicom(name)) for name, modality in DICOM_FILES}


@pytest.fixture(scope="session")
def shepp_logan() -> npt.NDArray[np.float32]:
    """scikit-image's 400x400 Shepp-Logan phantom (values 0..1), float32."""
    return shepp_logan_phantom().astype(np.float32)


@pytest.fixture(scope="session")
def reference_images(
    dicom_slices: dict[str, tuple[str, npt.NDArray[np.float32]]],
    shepp_logan: npt.NDArray[np.float32],
) -> dict[str, npt.NDArray[np.float32]]:
    """Every real slice plus the phantom, by name."""
    images = {name: frame for name, (_, frame) in dicom_slices.items()}
    images["shepp_logan"] = shepp_logan
    return images
