"""glibc malloc thresholds (worker/runtime/allocator.py), each case in a fresh process: the first
call of a process decides, and the thresholds cannot be read back, only seen in page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
from worker.runtime import allocator
tuned = allocator.tune(enabled=sys.argv[1] == "on")
again = allocator.tune(enabled=sys.argv[1] != "on")  # later calls change nothing
def response():  # kafka-python's receive path: a fresh buffer, a slice of it, a copy of that
    buffer = bytearray(2 << 20)
    copy = bytes(buffer[:])
    del buffer, copy
for _ in range(3):  # warm: the heap grows once
    response()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    response()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "again": again, "faults": faults}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_tuned_big_blocks_are_reused_without_page_faults() -> None:
    on, off = _probe("on"), _probe("off")
    assert on["tuned"] is True and on["again"] is True
    assert off["tuned"] is False and off["again"] is False
    # 20 responses touch 20 x 3 x 512 = 30,720 pages: glibc's defaults fault most of them in
    # again (its adaptive mmap threshold rises, but trimming gives the pages back); tuned, the
    # pages stay mapped and are reused.
    assert isinstance(on["faults"], int) and isinstance(off["faults"], int)
    assert on["faults"] < 500, on
    assert off["faults"] > 5000, off
