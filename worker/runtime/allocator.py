"""Keep big buffers on the heap: glibc malloc settings for processes that carry images.

Why: glibc's malloc serves any block above its mmap threshold (128 KiB at start, and it adapts)
from fresh ``mmap`` pages, and it returns them on ``free``. So each new block starts with one
page fault per 4 KiB page, and the kernel zero-fills each of those pages. The
worker makes several such blocks per event: kafka-python's fetch response buffer and its
copies (:mod:`kafka.protocol.frame`), each record's value, the decoded pixels and their float
copies. The GIL stays held through those faults. On the virtual machines this was measured on,
a fault costs several microseconds.

Measured (``kafka.protocol.frame.KafkaBytes``: allocate, fill, read back, the consumer's
receive path; Python 3.11, glibc 2.36, 2-core VM):

========================  ====================  ==================
response size             glibc defaults        with :func:`tune`
========================  ====================  ==================
300 KB                    0.70 ms               0.06 ms
2 MB                      5.9 ms                0.59 ms
17 MB                     54 ms                 17 ms
========================  ====================  ==================

:func:`tune` sets the two thresholds once, early in each of our processes (the worker and its
children, ``analyze``, the benchmark's compute-limit processes):

- blocks up to :data:`MMAP_THRESHOLD` (32 MiB, the most glibc allows) come from the heap;
- freed heap is given back to the system only above :data:`TRIM_THRESHOLD` (256 MiB) of free
  space at its top.

The freed pages stay mapped and are reused without faulting. The price is memory: a worker's
resident set stays at the peak of its transient buffers, plus up to 256 MiB of free heap
(within the Deployment's 2 GiB). Measured after two saturation bursts of 600 slices: 390 to
398 MB against 335 to 362 MB with glibc's defaults. The benchmark's compute limit rose by about
half with it; the worker's throughput end to end did not move beyond this machine's noise (see
the README's benchmark section).

Where malloc is not glibc's (musl, macOS) :func:`tune` does nothing and returns False. So does
``tune(enabled=False)``, which the worker calls with ``SCANSTREAM_MALLOC_TUNE=false``, for whoever
wants glibc's defaults back.

>>> isinstance(tune(), bool)
True
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Final

log = logging.getLogger(__name__)

MMAP_THRESHOLD: Final = 32 * 1024 * 1024
TRIM_THRESHOLD: Final = 256 * 1024 * 1024
# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

_done: bool | None = None


def tune(enabled: bool = True) -> bool:
    """Set glibc's mmap and trim thresholds (the first call of a process decides); True if
    they are set."""
    global _done
    if _done is not None:
        return _done
    if not enabled or not sys.platform.startswith("linux"):
        _done = False
        return _done
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = False
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("malloc thresholds %s", "set" if _done else "left at glibc's defaults")
    return _done
