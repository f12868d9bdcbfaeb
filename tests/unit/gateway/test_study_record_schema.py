"""The study-complete records StudyTracker makes keep to schemas/study-complete.v1.json."""

from __future__ import annotations

from worker.contract import validation_errors
from worker.gateway.studies import StudyTracker

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_first_and_late_revisions_validate() -> None:
    now = [0.0]
    tracker = StudyTracker(quiet_s=5, clock=lambda: now[0])
    tracker.note("1.2.3", "1.2.3.1", "1.2.3.1.1", CT, "e1")
    tracker.note("1.2.3", "", "", "", "e2")  # an instance without series or SOP UIDs
    now[0] = 6.0
    (first,) = tracker.due()
    assert validation_errors("study-complete.v1", first) == []
    tracker.announced(first)
    tracker.note("1.2.3", "1.2.3.2", "1.2.3.2.1", CT, "e3")
    now[0] = 12.0
    (late,) = tracker.due()
    assert (late["revision"], late["instance_count"]) == (2, 3)
    assert validation_errors("study-complete.v1", late) == []
    assert validation_errors("study-complete.v1", {**late, "patient_id": "x"}) != []
