"""How the imaging stage compiles its loops with numba: one place for the options and the cache.

Compiled code is cached on disk (numba's own cache: ``NUMBA_CACHE_DIR``, else ``__pycache__``
beside the module, else the user's cache directory). Where none is writable (a read-only
container) a loop is compiled once per process instead, which takes seconds: each module's
``warm_up`` does that at start, not on the first event.

>>> import numpy as np
>>> double = compile_loop(lambda a: a * 2)
>>> double(np.arange(3)).tolist()
[0, 2, 4]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba

log = logging.getLogger(__name__)

#: numba's dispatcher is untyped.
Kernel = Any


def compile_loop(function: Callable[..., Any], *, reassociate: bool = False) -> Kernel:
    """``function`` compiled with numba, without the GIL, with numpy's floating-point errors.

    ``error_model="numpy"``: 0/0 is NaN as in numpy (never raised), so every comparison with it
    is False, as in the numpy formulations. No bounds checks (they cost speed): the public
    wrappers check shapes, and a test runs every loop with ``boundscheck=True``.
    ``reassociate`` lets LLVM reorder additions (and fuse multiply-adds) so that a reduction
    vectorises; NaN and infinity keep their meaning. Sums then differ from a sequential sum in
    the last bits, which is why it is off unless a loop asks for it.
    """
    options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
    if reassociate:
        options["fastmath"] = {"reassoc", "contract"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as exc:  # numba found no writable cache location
        log.info("compiled %s not cached (%s); compiling per process", function.__name__, exc)
        return numba.njit(**options)(function)
