"""worker.series.summary: the accumulation of a series' findings into its summary document."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

import worker
from worker.contract import validation_errors
from worker.series.summary import (
    NotSummarisable,
    SeriesAccumulator,
    Trigger,
    facts_of,
    series_key,
    summary_document,
)

Make = Callable[..., dict[str, Any]]
SCHEMA = json.loads(
    (Path(worker.__file__).parent / "schemas" / "series-summary.v1.json").read_text()
)


def summarise(
    findings: list[dict[str, Any]],
    trigger: Trigger = "quiet",
    revision: int = 1,
    instances_expected: int | None = None,
) -> dict[str, Any]:
    acc = SeriesAccumulator()
    for f in findings:
        acc.add(f)
    doc = summary_document(
        acc,
        "1.2.3",
        "1.2.3.4",
        trigger,
        revision,
        "2026-01-01T00:05:00.000Z",
        30.0,
        instances_expected,
    )
    # Both validators agree that it keeps its contract.
    assert validation_errors("series-summary.v1", doc) == []
    assert list(Draft202012Validator(SCHEMA).iter_errors(doc)) == []
    return doc


def cnn(doc: dict[str, Any]) -> dict[str, Any]:
    [entry] = [m for m in doc["models"] if m["model"] == "cnn"]
    return entry


def test_max_and_mean_over_in_domain_frames(make_finding: Make) -> None:
    doc = summarise([make_finding(f"1.{i}", p) for i, p in enumerate([0.2, 0.4, 0.9])])
    entry = cnn(doc)
    assert entry["max_probability"] == 0.9
    assert entry["mean_probability"] == pytest.approx(0.5, abs=1e-15)
    assert (entry["frames_analysed"], entry["frames_in_domain"], entry["instances_in_domain"]) == (
        3,
        3,
        3,
    )
    assert entry["positive_in_domain"] == 1  # 0.9 only: the threshold is 0.5
    assert doc["instance_count"] == 3 and doc["frames_decoded"] == 3


def test_out_of_domain_frames_are_counted_but_never_in_the_probabilities(
    make_finding: Make,
) -> None:
    doc = summarise(
        [
            make_finding("1.1", 0.3),
            make_finding("1.2", 0.5),
            make_finding("1.3", 0.99, in_domain=False, out_of_domain=1),  # a confident outlier
        ]
    )
    entry = cnn(doc)
    assert entry["max_probability"] == 0.5 and entry["mean_probability"] == pytest.approx(0.4)
    assert entry["frames_out_of_domain"] == 1 and entry["frames_in_domain"] == 2
    assert entry["positive_in_domain"] == 1  # the 0.99 is positive, but out of domain


def test_all_out_of_domain_gives_null_probabilities(make_finding: Make) -> None:
    entry = cnn(summarise([make_finding("1.1", 0.9, in_domain=False)]))
    assert entry["max_probability"] is None and entry["mean_probability"] is None
    # Without frames_out_of_domain, an out-of-domain deciding frame means no frame was in domain.
    assert entry["frames_out_of_domain"] == 1 and entry["instances_in_domain"] == 0


def test_undeclared_domain_null_or_missing(make_finding: Make) -> None:
    doc = summarise([make_finding("1.1", 0.8, in_domain=None), make_finding("1.2", 0.7)])
    entry = cnn(doc)
    assert entry["frames_undeclared"] == 1 and entry["frames_in_domain"] == 1
    assert entry["max_probability"] == 0.7
    # The svm classifications carry no in_domain key at all: undeclared, never averaged.
    [svm] = [m for m in doc["models"] if m["model"] == "svm"]
    assert (svm["frames_undeclared"], svm["frames_analysed"], svm["max_probability"]) == (
        2,
        2,
        None,
    )


def test_multi_frame_instances_count_every_frame(make_finding: Make) -> None:
    doc = summarise(
        [
            make_finding("1.1", 0.6, frames=5, out_of_domain=2),
            make_finding("1.2", 0.4, in_domain=False, frames=3, out_of_domain=3),
        ]
    )
    entry = cnn(doc)
    assert doc["frames_decoded"] == 8
    assert (entry["frames_analysed"], entry["frames_in_domain"], entry["frames_out_of_domain"]) == (
        8,
        3,
        5,
    )
    assert entry["instances_in_domain"] == 1 and entry["max_probability"] == 0.6


def test_an_instance_counts_once_and_the_latest_finding_wins(make_finding: Make) -> None:
    acc = SeriesAccumulator()
    first = make_finding("1.1", 0.4, produced_at="2026-01-01T00:00:01.000Z")
    assert acc.add(first) is True
    assert acc.add(dict(first)) is False  # a redelivery changes nothing
    upgraded = make_finding("1.1", 0.8, produced_at="2026-01-01T00:00:09.000Z", version="2.0.0")
    assert acc.add(upgraded) is True
    assert acc.add(first) is False  # older: ignored, whatever the order
    doc = summary_document(acc, "1.2.3", "1.2.3.4", "quiet", 1, "2026-01-01T00:05:00Z", 30.0)
    assert doc["instance_count"] == 1 and cnn(doc)["max_probability"] == 0.8
    assert cnn(doc)["versions"] == ["2.0.0"]


def test_deterministic_whatever_the_arrival_order(make_finding: Make) -> None:
    findings = [
        make_finding("1.1", 0.1, produced_at="2026-01-01T00:00:03.000Z"),
        make_finding("1.2", 0.7, in_domain=False, produced_at="2026-01-01T00:00:01.000Z"),
        make_finding("1.3", 0.35, produced_at="2026-01-01T00:00:02.000+01:00"),
        make_finding("1.1", 0.6, produced_at="2026-01-01T00:00:04.000Z", version="2.0.0"),
    ]
    docs = [summarise(list(order)) for order in itertools.permutations(findings)]
    assert all(d == docs[0] for d in docs)
    # Times are compared as times, not as strings (the +01:00 one is the earliest).
    assert docs[0]["first_finding_at"] == "2026-01-01T00:00:02.000+01:00"
    assert docs[0]["last_finding_at"] == "2026-01-01T00:00:04.000Z"


def test_summary_id_names_the_findings_summarised(make_finding: Make) -> None:
    one = summarise([make_finding("1.1")])
    again = summarise([make_finding("1.1")], revision=3, trigger="study_complete")
    more = summarise([make_finding("1.1"), make_finding("1.2")])
    assert one["summary_id"] == again["summary_id"] != more["summary_id"]
    assert (again["revision"], again["trigger"]) == (3, "study_complete")


def test_uids_only_no_other_finding_field(make_finding: Make) -> None:
    finding = make_finding("1.1")
    finding["patient_key"] = "a" * 64
    doc = summarise([finding], instances_expected=2)
    assert "a" * 64 not in json.dumps(doc)
    assert doc["instances_expected"] == 2


@pytest.mark.parametrize(
    "change",
    [
        {"series_instance_uid": None},
        {"study_instance_uid": ""},
    ],
)
def test_a_finding_without_its_uids_cannot_be_summarised(
    make_finding: Make, change: dict[str, Any]
) -> None:
    with pytest.raises(NotSummarisable):
        series_key({**make_finding("1.1"), **change})


@pytest.mark.parametrize(
    "change",
    [
        {"classifications": [{"model": "cnn"}]},
        {"classifications": [{"model": "cnn", "label": "x", "probability": 1.5, "positive": 1}]},
        {"frame_count": 0},
        {"produced_at": "yesterday"},
        {"models": None},
    ],
)
def test_what_is_not_a_finding_is_refused(make_finding: Make, change: dict[str, Any]) -> None:
    with pytest.raises(NotSummarisable):
        facts_of({**make_finding("1.1"), **change})


def test_an_empty_series_has_no_summary() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summary_document(SeriesAccumulator(), "1.2", "1.2.3", "quiet", 1, "2026-01-01T00:00Z", 1.0)
