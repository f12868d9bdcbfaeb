"""Issue 12, without a broker: DICOM values other than UIDs never reach a finding, an alert, a
dead letter's headers, a log line (any level, any logger) or the metrics.

The instances of :mod:`phi_markers` carry a marker string in every identifying and free-text
element; each becomes a finding or a dead letter for a different reason. The same instances go
through the worker on the real broker in ``tests/integration/test_phi_markers.py``.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from phi_markers import (
    MAX_MESSAGE_BYTES,
    MAX_PIXELS,
    PINNED_LEVELS,
    Case,
    LogCapture,
    carries_markers,
    cases,
    leaks,
)

from worker.contract import ScanEvent
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.pipeline import Outcome, Pipeline
from worker.runtime.observer import Observer
from worker.runtime.results import from_outcome
from worker.settings import AlertRule, Secret, Settings

SETTINGS = Settings(
    max_message_bytes=MAX_MESSAGE_BYTES,
    max_pixels=MAX_PIXELS,
    alert_rules=(AlertRule("lesion", 0.0),),
    pseudonym_key=Secret("k3y"),
)


@pytest.fixture(scope="module")
def processed() -> tuple[list[Case], list[Outcome], list[str]]:
    all_cases = cases()
    events = [ScanEvent(f"e{i}", 0.0, data=c.data) for i, c in enumerate(all_cases)]
    with LogCapture() as logs:
        outcomes = Pipeline(ModelSet.load(), SETTINGS).process(events)
    return all_cases, outcomes, logs.lines


def _record(offset: int, value: bytes) -> Any:
    return SimpleNamespace(
        topic="scans.events",
        partition=0,
        offset=offset,
        key=b"study",
        value=value,
        headers=[("content-type", b"application/dicom")],
        timestamp=0,
    )


def test_every_case_ends_as_planned(
    processed: tuple[list[Case], list[Outcome], list[str]],
) -> None:
    all_cases, outcomes, _ = processed
    assert [c.name for c in all_cases if not carries_markers(c, c.data)] == []
    got = [("finding" if o.finding is not None else o.reason) for o in outcomes]
    assert got == [c.expected for c in all_cases]
    for case, outcome in zip(all_cases, outcomes, strict=True):
        if case.alert:
            assert outcome.alerts, f"{case.name}: {outcome.finding}"
    assert outcomes[0].finding is not None and outcomes[0].finding["patient_key"]


def test_findings_alerts_and_details_hold_no_marker(
    processed: tuple[list[Case], list[Outcome], list[str]],
) -> None:
    all_cases, outcomes, _ = processed
    for case, outcome in zip(all_cases, outcomes, strict=True):
        texts = [json.dumps(outcome.finding), *(json.dumps(a) for a in outcome.alerts)]
        if outcome.rejection is not None:
            texts += [str(outcome.rejection), repr(outcome.rejection)]
        assert [leaks(t) for t in texts if leaks(t)] == [], (case.name, texts)


def test_log_lines_hold_no_marker(
    processed: tuple[list[Case], list[Outcome], list[str]],
) -> None:
    _, _, lines = processed
    assert [line for line in lines if leaks(line)] == []
    # The "legacy birth date" case makes pydicom warn, quoting the value: withheld, not dropped.
    assert any("pydicom warning withheld" in line for line in lines)


def test_dead_letter_headers_metrics_and_observer_logs_hold_no_marker(
    processed: tuple[list[Case], list[Outcome], list[str]],
) -> None:
    all_cases, outcomes, _ = processed
    results = [
        from_outcome(_record(i, c.data), o, SETTINGS)
        for i, (c, o) in enumerate(zip(all_cases, outcomes, strict=True))
    ]
    for case, result in zip(all_cases, results, strict=True):
        for message in result.messages:
            assert message is not None
            topic, value, headers = message
            if topic == SETTINGS.dlq_topic:
                assert value == case.data  # the original DICOM, markers and all, by design
                assert carries_markers(case, value)
            else:
                assert leaks(value) == [], case.name
            assert [(k, v) for k, v in headers if leaks(k) or leaks(v)] == [], case.name
    metrics = Metrics()
    with LogCapture() as logs:
        Observer(metrics, Health()).committed(results)
    assert len(logs.worker_lines()) >= 2 * len(results)  # one line per result, two formats
    assert [line for line in logs.lines if leaks(line)] == []
    assert leaks(metrics.render()) == []


def test_pydicom_log_records_are_withheld() -> None:
    """What pydicom (or any pydicom.* logger) logs never reaches the root logger's handlers."""
    with LogCapture() as logs:
        logging.getLogger("pydicom").warning("Invalid value for VR DA: 'PHIMARK-X'")
        logging.getLogger("pydicom.pixels.utils").error("(0010,0010) value 'PHIMARK-Y'")
    assert [line for line in logs.lines if leaks(line)] == []
    assert any("pydicom error withheld" in line and "(0010,0010)" in line for line in logs.lines)


def test_worker_log_setup_keeps_kafka_python_at_warning_even_at_debug() -> None:
    """kafka-python's DEBUG lines quote raw record bytes (the DICOM): the worker's log set-up
    must keep them off at every log level, as the captures of these tests assume."""
    from worker.runtime import jsonlog

    root = logging.getLogger()
    names = ["kafka", "pydicom"]
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names}
    try:
        jsonlog.setup("DEBUG")
        for name, level in PINNED_LEVELS.items():
            assert logging.getLogger(name).level == level
        assert not logging.getLogger("kafka.protocol.parser").isEnabledFor(logging.DEBUG)
        for name in list(logging.root.manager.loggerDict):  # none overrides the pin below it
            if any(name.startswith(p + ".") for p in PINNED_LEVELS):
                assert logging.getLogger(name).level == logging.NOTSET, name
        assert logging.getLogger("worker").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
