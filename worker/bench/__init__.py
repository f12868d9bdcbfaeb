"""Benchmarks behind ``scanstream bench``: each measures one stage on a deterministic workload."""
