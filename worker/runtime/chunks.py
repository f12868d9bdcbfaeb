"""How a poll's records are split into compute chunks, so that findings leave as they are made.

A poll can bring up to ``max_poll_records`` events. Computed as one batch, every event's finding
waits for the whole batch: 64 slices at 15 ms each hold the first finding back a second, and
the tail of the latency under load was that wait (measured: README, benchmark section). The loop
therefore computes a poll in chunks and delivers each chunk while the next one computes.

A chunk is sized by time, not by count: :class:`ChunkSizer` keeps a moving average of the
compute seconds per record and takes as many records as fit in ``target_s`` (at least one). Big
slices then go one or two at a time, tiny ones many at a time (so the per-chunk cost of a produce
round trip and an asynchronous commit stays small against the compute). The first chunk of a
worker takes one record, since nothing is known yet. ``target_s`` 0 turns chunking off: the
whole poll is one chunk, as before.

>>> sizer = ChunkSizer(target_s=0.02)
>>> sizer.take(64)
1
>>> sizer.observe(records=1, seconds=0.010)
>>> sizer.take(64), sizer.take(1)
(2, 1)
>>> ChunkSizer(target_s=0).take(64)
64
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

T = TypeVar("T")

#: Weight of the newest chunk in the moving average: recent enough to follow a change of
#: workload within a few chunks, smooth enough that one slow chunk does not halve the next.
SMOOTHING: Final = 0.3


class ChunkSizer:
    """Records per compute chunk from a moving average of seconds per record."""

    def __init__(self, target_s: float) -> None:
        if not target_s >= 0:  # also refuses NaN
            raise ValueError(f"target_s must be >= 0, got {target_s}")
        self.target_s = target_s
        self.per_record_s: float | None = None

    def take(self, remaining: int) -> int:
        """How many of ``remaining`` records the next chunk takes (at least 1 when any)."""
        if remaining <= 0:
            return 0
        if self.target_s == 0:
            return remaining
        if self.per_record_s is None:
            return 1
        fits = int(self.target_s / self.per_record_s) if self.per_record_s > 0 else remaining
        return max(1, min(remaining, fits))

    def observe(self, records: int, seconds: float) -> None:
        """A chunk of ``records`` took ``seconds`` to compute."""
        if records <= 0 or not seconds >= 0:
            return
        sample = seconds / records
        if self.per_record_s is None:
            self.per_record_s = sample
        else:
            self.per_record_s += SMOOTHING * (sample - self.per_record_s)

    def split(self, records: Sequence[T]) -> Iterator[Sequence[T]]:
        """``records`` in consecutive chunks, each sized when it is taken (so that an
        :meth:`observe` between two chunks already sizes the next).

        >>> [list(c) for c in ChunkSizer(target_s=0).split([1, 2, 3])]
        [[1, 2, 3]]
        """
        start = 0
        while start < len(records):
            n = self.take(len(records) - start)
            yield records[start : start + n]
            start += n
