"""Whether onnxruntime-gpu can really use CUDA here, found out before a session asks for it.

Asking for the CUDA provider where its libraries are missing makes onnxruntime log a red error
(``Failed to load library libonnxruntime_providers_cuda.so``) and fall back to the CPU. So the
libraries are looked for first: the NVIDIA driver (``libcuda.so.1``), then the CUDA runtime,
cuBLAS and cuDNN of the CUDA major version this onnxruntime was built for. The runtime wheels of
the ``cuda`` extra (``pip install 'scanstream[cuda]'``, ``make setup CUDA=1``) are loaded with
``onnxruntime.preload_dlls()`` when they are installed, so a machine with only the driver runs
on CUDA. When something is missing, the reason says what, and the caller runs on the CPU and
says so in one INFO line.

>>> reason = cuda_unusable_reason()
>>> reason is None or isinstance(reason, str)
True
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
from functools import cache

import onnxruntime as ort


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _cuda_major() -> str:
    try:
        from onnxruntime.capi import build_and_package_info

        return str(getattr(build_and_package_info, "cuda_version", "") or "").split(".")[0]
    except ImportError:
        return ""


@cache
def cuda_unusable_reason() -> str | None:
    """None when CUDA can run here; else why not, in a few words (what to install)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    if not _loads("libcuda.so.1"):
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
        # The nvidia-* wheels of the cuda extra; preload_dlls prints what it cannot find.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls(msvc=False)
    major = _cuda_major()
    wanted = [f"libcudart.so.{major}", f"libcublasLt.so.{major}"] if major else []
    missing = [lib for lib in (*wanted, "libcudnn.so.9") if not _loads(lib)]
    if missing:
        return (
            f"the CUDA {major or '?'} libraries {', '.join(missing)} are missing: install "
            "scanstream[cuda] (make setup CUDA=1)"
        )
    return None
