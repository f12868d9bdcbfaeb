"""The saturation rate is the worker's own on a backlog: the seconds of publishing, when the
publisher shares the worker's cores, are left out, and so is the first chunk of answers, which
was computed before the clock started."""

from __future__ import annotations

import pytest

from worker.bench.e2e import Arrival, BenchError, backlog_rate, known_partitions


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


class _Unknown:
    """A consumer whose metadata never learns the topic."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set()


def test_a_topic_whose_partitions_stay_unknown_fails_the_phase_by_name() -> None:
    # Never partition 0 alone as a guess: the findings that went elsewhere would be missed.
    with pytest.raises(
        BenchError, match=r"the topic t\.findings has no partitions known after 0 s"
    ):
        known_partitions(_Unknown(), "t.findings", timeout_s=0.2)
