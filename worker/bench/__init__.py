"""Benchmarks behind ``scanstream bench``: each measures one stage on a deterministic workload."""

from worker.errors import ScanStreamError


class BenchError(ScanStreamError):
    """A benchmark phase could not complete (no answer in time, a worker exited)."""
