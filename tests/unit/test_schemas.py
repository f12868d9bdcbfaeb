"""The public contract in schemas/: valid schemas, examples that pass, counter-examples that fail.

Every counter-example in schemas/examples/invalid/ is a valid example with one thing broken; the
test checks it fails *for that reason* (keyword and location), so that a counter-example cannot
pass by being wrong in some unrelated way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

import worker
from worker.errors import REASONS

SCHEMAS = Path(worker.__file__).parent / "schemas"
EXAMPLES = SCHEMAS / "examples"
INVALID = EXAMPLES / "invalid"
SCHEMA_NAMES = (
    "scan-event.v1",
    "finding.v1",
    "alert.v1",
    "dead-letter.v1",
    "study-complete.v1",
    "series-summary.v1",
)

# counter-example file -> (failing keyword, JSON path of the failing instance)
EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "finding.v1.patient_name.json": ("additionalProperties", "$"),
    "finding.v1.patient_birth_date.json": ("additionalProperties", "$"),
    "finding.v1.probability_above_one.json": ("maximum", "$.classifications[0].probability"),
    "finding.v1.too_many_frames.json": ("maxItems", "$.frames"),
    "finding.v1.bad_produced_at.json": ("pattern", "$.produced_at"),
    "finding.v1.bad_uid.json": ("pattern", "$.sop_instance_uid"),
    "finding.v1.unknown_stage_timing.json": ("additionalProperties", "$.timings_ms"),
    "finding.v1.missing_finding_id.json": ("required", "$"),
    "alert.v1.unknown_severity.json": ("enum", "$.severity"),
    "alert.v1.threshold_percent.json": ("maximum", "$.rule.threshold"),
    "scan-event.v1.s3_uri.json": ("pattern", "$.uri"),
    "scan-event.v1.missing_uri.json": ("required", "$"),
    "scan-event.v1.patient_id.json": ("additionalProperties", "$"),
    "dead-letter.v1.unknown_reason.json": ("enum", "$['scanstream.error.reason']"),
    "dead-letter.v1.negative_partition.json": ("pattern", "$['scanstream.error.partition']"),
    "dead-letter.v1.missing_at.json": ("required", "$"),
    "study-complete.v1.revision_zero.json": ("minimum", "$.revision"),
    "series-summary.v1.unknown_trigger.json": ("enum", "$.trigger"),
}


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        load(SCHEMAS / f"{name}.json"), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_of(example: Path) -> str:
    # Example names are "<schema-name>.<variant>.json", the schema name being e.g. "finding.v1".
    for name in SCHEMA_NAMES:
        if example.name.startswith(name + "."):
            return name
    raise AssertionError(f"{example.name} does not start with a schema name")


VALID_EXAMPLES = sorted(EXAMPLES.glob("*.example.json"))
INVALID_EXAMPLES = sorted(INVALID.glob("*.json"))


def test_schema_files_are_exactly_the_contract() -> None:
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load(SCHEMAS / f"{name}.json")
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.json")
    assert schema["title"] and schema["description"]


def _properties(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, subschema) declared under a ``properties`` keyword, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                for prop, sub in value.items():
                    yield f"{path}.{prop}", sub
                    yield from _properties(sub, f"{path}.{prop}")
            else:
                yield from _properties(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _properties(item, path)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_field_is_described(name: str) -> None:
    fields = list(_properties(load(SCHEMAS / f"{name}.json"), name))
    assert fields
    undescribed = [path for path, sub in fields if not sub.get("description")]
    assert undescribed == []


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_schema_has_a_valid_example(name: str) -> None:
    assert (EXAMPLES / f"{name}.example.json").is_file()


@pytest.mark.parametrize("example", VALID_EXAMPLES, ids=lambda p: p.name)
def test_valid_example_validates_with_format_checking(example: Path) -> None:
    errors = [e.message for e in validator(schema_of(example)).iter_errors(load(example))]
    assert errors == []


def test_every_counter_example_has_an_expected_failure() -> None:
    assert sorted(p.name for p in INVALID_EXAMPLES) == sorted(EXPECTED_FAILURES)


@pytest.mark.parametrize("example", INVALID_EXAMPLES, ids=lambda p: p.name)
def test_counter_example_is_rejected_for_its_reason(example: Path) -> None:
    keyword, where = EXPECTED_FAILURES[example.name]
    errors = list(validator(schema_of(example)).iter_errors(load(example)))
    assert errors, f"{example.name} was accepted"
    # One broken thing: every error sits at the same place ("format" may join "pattern" there
    # when a date-time format checker is installed).
    assert {e.json_path for e in errors} == {where}
    assert keyword in {e.validator for e in errors}


def test_dead_letter_reasons_match_the_code() -> None:
    schema = load(SCHEMAS / "dead-letter.v1.json")
    assert tuple(schema["properties"]["scanstream.error.reason"]["enum"]) == REASONS


def test_dead_letter_passes_original_headers_through_as_strings() -> None:
    v = validator("dead-letter.v1")
    headers = load(EXAMPLES / "dead-letter.v1.example.json")
    assert v.is_valid({**headers, "x-trace-id": "abc"})
    assert not v.is_valid({**headers, "x-trace-id": 7})


@pytest.mark.parametrize(
    "value",
    ["2024-06-01", "2024-06-01T09:30:00", "2024-13-01T09:30:00Z", "yesterday", "1717234200"],
)
def test_date_time_is_enforced_without_a_format_checker(value: str) -> None:
    # jsonschema checks format "date-time" only when rfc3339-validator is installed, which is not
    # a dependency; the pattern in the schemas enforces the RFC 3339 shape regardless.
    v = Draft202012Validator(load(SCHEMAS / "alert.v1.json"))
    alert = load(EXAMPLES / "alert.v1.example.json")
    assert v.is_valid(alert)
    assert not v.is_valid({**alert, "raised_at": value})


@pytest.mark.parametrize(
    "uid, ok",
    [("1.2.840.10008.1.2.1", True), ("1.2.3.", False), (".1.2", False), ("1." + "2" * 63, False)],
)
def test_uid_pattern(uid: str, ok: bool) -> None:
    v = validator("scan-event.v1")
    assert v.is_valid({"uri": "file:///x.dcm", "sop_instance_uid": uid}) is ok


def test_finding_forbids_patient_identity() -> None:
    v = validator("finding.v1")
    finding = load(EXAMPLES / "finding.v1.example.json")
    for field in ("patient_name", "patient_id", "patient_birth_date", "PatientName"):
        assert not v.is_valid({**finding, field: "x"}), field
