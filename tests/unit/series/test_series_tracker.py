"""worker.series.tracker: when a series is due (quiet, study complete), revisions, and holds,
all on an injected clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from worker.contract import validation_errors
from worker.series.tracker import Due, SeriesTracker

Make = Callable[..., dict[str, Any]]
P0, P1, S0 = "findings-0", "findings-1", "studies-0"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> SeriesTracker:
    return SeriesTracker(quiet_s=30.0, clock=clock, wall=lambda: 1767225600.0, forget_after_s=600)


def study_record(study: str, instances: list[tuple[str, str]], revision: int = 1) -> dict[str, Any]:
    """A study-complete.v1 record listing (series, sop) pairs."""
    counts: dict[str, int] = {}
    for series, _ in instances:
        counts[series] = counts.get(series, 0) + 1
    record = {
        "study_instance_uid": study,
        "revision": revision,
        "instance_count": len(instances),
        "series": [{"series_instance_uid": s, "instance_count": n} for s, n in counts.items()],
        "instances": [
            {
                "sop_instance_uid": sop,
                "series_instance_uid": series,
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "event_id": f"e-{sop}",
            }
            for series, sop in sorted(instances, key=lambda i: i[1])
        ],
        "first_received_at": "2026-01-01T00:00:00.000Z",
        "completed_at": "2026-01-01T00:00:10.000Z",
        "quiet_period_s": 10.0,
    }
    assert validation_errors("study-complete.v1", record) == []
    return record


def deliver(tracker: SeriesTracker) -> list[Due]:
    """What is due now, acknowledged at once (each document checked against its schema)."""
    due = tracker.due()
    for d in due:
        assert validation_errors("series-summary.v1", d.document) == []
        tracker.summarised(d)
    return due


def test_quiet_period_triggers_one_summary(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    assert tracker.finding(make_finding("1.1"), P0, 10)
    clock.now = 20.0
    assert tracker.finding(make_finding("1.2"), P0, 11)
    clock.now = 49.9
    assert tracker.due() == []  # 29.9 s since the last finding
    clock.now = 50.0
    [due] = deliver(tracker)
    doc = due.document
    assert (doc["trigger"], doc["revision"], doc["instance_count"]) == ("quiet", 1, 2)
    assert doc["instances_expected"] is None and doc["summarized_at"] == "2026-01-01T00:00:00.000Z"
    clock.now = 500.0
    assert tracker.due() == []  # once


def test_a_late_finding_reopens_the_series_with_everything_so_far(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1", 0.2), P0, 0)
    clock.now = 30.0
    [first] = deliver(tracker)
    clock.now = 100.0
    assert tracker.finding(make_finding("1.2", 0.8), P0, 1)
    assert tracker.due() == []
    clock.now = 130.0
    [second] = deliver(tracker)
    assert second.document["revision"] == 2 and second.document["instance_count"] == 2
    [entry] = [m for m in second.document["models"] if m["model"] == "cnn"]
    assert entry["max_probability"] == 0.8
    assert first.document["summary_id"] != second.document["summary_id"]


def test_a_redelivered_finding_reopens_nothing(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    clock.now = 30.0
    deliver(tracker)
    assert tracker.finding(make_finding("1.1"), P0, 7) is False  # a replayed finding
    clock.now = 90.0
    assert tracker.due() == [] and tracker.holds() == {}


def test_study_complete_summarises_every_series_of_the_study_at_once(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1", series="1.2.3.4"), P0, 0)
    tracker.finding(make_finding("1.2", series="1.2.3.5"), P0, 1)
    tracker.finding(make_finding("9.1", study="9.9", series="9.9.1"), P0, 2)  # another study
    clock.now = 5.0
    tracker.study_complete(study_record("1.2.3", [("1.2.3.4", "1.1"), ("1.2.3.5", "1.2")]), S0, 0)
    due = deliver(tracker)
    assert sorted(d.key for d in due) == [("1.2.3", "1.2.3.4"), ("1.2.3", "1.2.3.5")]
    assert {d.document["trigger"] for d in due} == {"study_complete"}
    assert {d.document["instances_expected"] for d in due} == {1}
    assert tracker.holds() == {P0: 2, S0: 0}  # the other study's finding; the record until...
    tracker.due()  # ...the next look sees it done
    assert tracker.holds() == {P0: 2}


def test_study_complete_waits_for_the_findings_it_lists(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    # The worker lags behind the gateway: the record comes before the last findings.
    tracker.study_complete(study_record("1.2.3", [("1.2.3.4", "1.1"), ("1.2.3.4", "1.2")]), S0, 4)
    tracker.finding(make_finding("1.1"), P0, 0)
    assert tracker.due() == []
    assert tracker.holds() == {P0: 0, S0: 4}
    clock.now = 12.0
    tracker.finding(make_finding("1.2"), P0, 1)
    [due] = deliver(tracker)
    assert due.document["trigger"] == "study_complete"
    assert (due.document["instance_count"], due.document["instances_expected"]) == (2, 2)
    tracker.due()
    assert tracker.holds() == {}


def test_listed_instances_that_never_come_end_by_quiet(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    tracker.study_complete(study_record("1.2.3", [("1.2.3.4", "1.1"), ("1.2.3.4", "1.9")]), S0, 0)
    clock.now = 29.0
    assert tracker.due() == []  # 1.9 became a dead letter, say: nobody will tell
    clock.now = 30.0
    [due] = deliver(tracker)
    assert due.document["trigger"] == "quiet"
    assert (due.document["instance_count"], due.document["instances_expected"]) == (1, 2)
    tracker.due()
    assert tracker.holds() == {}


def test_study_complete_after_the_quiet_summary_says_nothing_new(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    clock.now = 30.0
    deliver(tracker)
    tracker.study_complete(study_record("1.2.3", [("1.2.3.4", "1.1")]), S0, 0)
    assert tracker.due() == [] and tracker.holds() == {}


def test_a_newer_study_record_brings_the_late_series_in(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    tracker.study_complete(study_record("1.2.3", [("1.2.3.4", "1.1")]), S0, 0)
    [first] = deliver(tracker)
    assert first.document["revision"] == 1
    clock.now = 50.0
    tracker.finding(make_finding("1.2"), P0, 1)  # a late instance: the gateway re-opens too
    assert tracker.due() == []
    tracker.study_complete(
        study_record("1.2.3", [("1.2.3.4", "1.1"), ("1.2.3.4", "1.2")], revision=2), S0, 1
    )
    [second] = deliver(tracker)
    assert (second.document["revision"], second.document["trigger"]) == (2, "study_complete")
    assert second.document["instance_count"] == 2


def test_holds_are_the_lowest_unsummarised_offsets(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1", series="1.2.3.4"), P0, 5)
    tracker.finding(make_finding("1.2", series="1.2.3.5"), P0, 6)
    tracker.finding(make_finding("2.1", study="2.2", series="2.2.1"), P1, 3)
    clock.now = 20.0
    tracker.finding(make_finding("1.3", series="1.2.3.5"), P0, 9)
    assert tracker.holds() == {P0: 5, P1: 3}
    clock.now = 30.0
    due = tracker.due()
    assert sorted(d.key for d in due) == [("1.2.3", "1.2.3.4"), ("2.2", "2.2.1")]
    assert tracker.holds(assuming=due) == {P0: 6}
    for d in due:
        tracker.summarised(d)
    assert tracker.holds() == {P0: 6}


def test_a_change_while_a_summary_was_in_flight_keeps_the_series_open(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    clock.now = 30.0
    [due] = tracker.due()
    tracker.finding(make_finding("1.2"), P0, 1)  # arrives before the ack
    tracker.summarised(due)
    assert tracker.holds() == {P0: 0}  # still held: the new finding is in no summary yet
    clock.now = 60.0
    [again] = deliver(tracker)
    assert again.document["revision"] == 2 and again.document["instance_count"] == 2


def test_summarised_series_are_forgotten_after_a_while(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    clock.now = 30.0
    deliver(tracker)
    clock.now = 30.0 + 600.0
    assert tracker.due() == [] and tracker.open_series() == 0
    tracker.finding(make_finding("1.2"), P0, 1)
    clock.now += 30.0
    [due] = deliver(tracker)
    assert (due.document["revision"], due.document["instance_count"]) == (1, 1)


def test_revoked_partitions_are_forgotten(
    tracker: SeriesTracker, clock: Clock, make_finding: Make
) -> None:
    tracker.finding(make_finding("1.1"), P0, 0)
    tracker.finding(make_finding("2.1", study="2.2", series="2.2.1"), P1, 0)
    tracker.study_complete(study_record("3.3", [("3.3.1", "3.1")]), S0, 2)
    tracker.forget_partitions({P0, S0})
    assert tracker.holds() == {P1: 0}
    clock.now = 30.0
    assert [d.key for d in tracker.due()] == [("2.2", "2.2.1")]
