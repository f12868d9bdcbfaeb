"""The saturation rate is the worker's own on a backlog: the seconds of publishing, when the
publisher shares the worker's cores, are left out, and so is the first chunk of answers, which
was computed before the clock started."""

from __future__ import annotations

from worker.bench.e2e import backlog_rate
from worker.bench.loadgen import Arrival


def _at(*times: float, frames: int = 1) -> list[Arrival]:
    return [Arrival(t, frames, "w", None, None) for t in times]


def test_answers_during_publishing_and_the_first_chunk_after_it_are_not_counted() -> None:
    # Chunks of two answers (two frames each) at 1, 2, 3 and 4 s, publishing over at 0.5 s:
    # the three chunks after the first, 12 frames, in three seconds.
    arrivals = _at(0.1, 0.2, 0.4, frames=2) + _at(1, 1, 2, 2, 3, 3, 4, 4, frames=2)
    assert backlog_rate(arrivals, published_at=0.5) == 4.0


def test_too_short_a_backlog_gives_no_rate() -> None:
    # A quarter of the answers at least must come after the last send.
    assert backlog_rate(_at(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 2.0), published_at=1.0) is None
    assert backlog_rate(_at(2.0, 2.0), published_at=1.0) is None  # no time between answers
    assert backlog_rate(_at(0.1, 0.2, 2.0, 3.0), published_at=1.0) == 1.0
