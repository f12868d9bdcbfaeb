"""The end-to-end bench's reference (claim-check) phase, without a broker or a worker process.

The events are checked the way the worker sees them (:func:`worker.contract.parse_event`, then
:func:`worker.fetch.fetch` under the policy the phase's environment configures), and the suite's
orchestration with its measured steps replaced by fakes: which phase gets which events and
environment, and the figures the result and its report carry.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from worker.bench import e2e, suite
from worker.bench.references import write_references
from worker.bench.report import render_markdown
from worker.contract import DICOM_TYPE, JSON_TYPE, parse_event, validation_errors
from worker.fetch import fetch
from worker.references import ALLOW, ReferencePolicy
from worker.runtime.publisher import event_headers
from worker.settings import Settings

_small_workload = functools.partial(suite.build_workload, phantoms=2, size=64)


def test_reference_events_parse_to_uri_events_the_worker_may_read(tmp_path: Path) -> None:
    events = _small_workload()
    refs, env = write_references(events, tmp_path / "refs")
    assert set(env) == {ALLOW}
    policy = ReferencePolicy.from_settings(Settings.from_env(env))  # as the worker builds it
    assert [r.name for r in refs] == [e.name for e in events]
    for i, (ref, event) in enumerate(zip(refs, events, strict=True)):
        assert (ref.key, ref.frames, ref.content_type) == (event.key, event.frames, JSON_TYPE)
        assert validation_errors("scan-event.v1", json.loads(ref.data)) == []
        headers = event_headers(f"id-{i}", 1.7e9, ref.content_type)
        parsed = parse_event(ref.data, headers, "default-id", 0.0)
        assert parsed.data is None and parsed.uri is not None
        assert parsed.uri.startswith("file:///")
        # The header's id, not one in the document: every send of a file answers under its own.
        assert parsed.event_id == f"id-{i}" and parsed.sent_at == pytest.approx(1.7e9)
        assert parsed.expected_sha256 == hashlib.sha256(event.data).hexdigest()
        got = fetch(parsed.uri, 1 << 24, 5.0, parsed.expected_sha256, policy=policy)
        assert got == event.data


def test_worker_process_passes_extra_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], env: dict[str, str], **_: Any) -> None:
            seen.append(env)

    monkeypatch.setattr(e2e.subprocess, "Popen", FakePopen)
    monkeypatch.delenv(ALLOW, raising=False)
    settings = Settings(bootstrap_servers="localhost:1", worker_id="w")
    e2e.WorkerProcess(settings, 1, False, tmp_path / "a.log")
    e2e.WorkerProcess(settings, 1, False, tmp_path / "b.log", {ALLOW: "file:///x/"})
    assert ALLOW not in seen[0]
    assert seen[1][ALLOW] == "file:///x/" and seen[1]["SCANSTREAM_WORKER_ID"] == "w"


def test_bench_e2e_runs_a_reference_phase_and_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_e2e with the broker, the worker and every measurement faked."""
    calls: dict[str, dict[str, Any]] = {}
    rates = {"worker1": 90.0, "worker2": 150.0, "naive": 40.0, "reference": 81.23, "thread": 120.0}

    @contextmanager
    def fake_kafka(settings: Settings, tmp: Path) -> Iterator[tuple[str, str, int | None]]:
        yield "localhost:1", "fake broker", 4242

    @contextmanager
    def fake_phase(
        settings: Settings, bootstrap: str, tag: str, processes: int, naive: bool,
        warm: e2e.Event, log_dir: Path, extra_env: dict[str, str] | None = None,
        broker_pid: int | None = None, generator: str = "",
    ) -> Iterator[str]:  # fmt: skip
        calls[tag] = {
            "warm": warm, "env": extra_env, "broker_pid": broker_pid, "generator": generator
        }  # fmt: skip
        yield tag

    def fake_saturate(tag: str, events: Any, n: int, timeout_s: float) -> dict[str, Any]:
        calls[tag].update(events=list(events), n=n)
        return {"img_s": rates[tag]}

    def fake_paced(*_: Any) -> dict[str, Any]:
        return {"p50_ms": 5.0, "p95_ms": 8.0, "p99_ms": 9.0}

    def fake_limit(events: Any, settings: Settings, processes: int) -> dict[str, Any]:
        rate = 100.0 * processes
        return {"img_s": rate, "windows_img_s": [rate], "events": 10, "processes": processes,
                "provider": "cpu", "provider_note": ""}  # fmt: skip

    monkeypatch.setenv(suite.NOISE_ENV, "7.5")
    monkeypatch.setattr(suite, "build_workload", _small_workload)
    monkeypatch.setattr(suite, "compute_limit", fake_limit)
    monkeypatch.setattr(suite, "_kafka", fake_kafka)
    monkeypatch.setattr(e2e, "phase", fake_phase)
    monkeypatch.setattr(e2e, "saturate", fake_saturate)
    monkeypatch.setattr(e2e, "paced", fake_paced)
    result = suite.bench_e2e(Settings(), 2, "kafka-python")

    assert result["e2e_reference_img_s"] == 81.23
    assert result["ratio_to_limit_reference"] == 0.812  # rounded as ratio_to_limit is
    assert result["ratio_to_limit"] == 0.9
    assert result["workload"]["noise_hu"] == 7.5
    ref = calls["reference"]
    assert set(ref["env"]) == {ALLOW} and ref["n"] == calls["naive"]["n"]
    assert {e.content_type for e in ref["events"]} == {JSON_TYPE}
    assert ref["warm"].content_type == JSON_TYPE  # the warm-up reads a file too
    # Every phase is told the local broker's pid, for the CPU table.
    assert {c["broker_pid"] for c in calls.values()} == {4242}
    # And every phase uses the load generator asked for, which the result names.
    assert {c["generator"] for c in calls.values()} == {"kafka-python"}
    assert result["load_generator"].startswith("kafka-python 3.")
    assert calls["thread"]["env"] == {"SCANSTREAM_COMPUTE_PROCESS": "false"}
    assert calls["thread"]["n"] == calls["worker1"]["n"]
    assert result["e2e_thread_img_s"] == 120.0
    assert (result["ratio_to_limit_thread"], result["ratio_to_naive_thread"]) == (1.2, 3.0)
    for tag in ("worker1", "worker2", "naive"):
        assert not calls[tag]["env"]
        assert {e.content_type for e in calls[tag]["events"]} == {DICOM_TYPE}
    md = render_markdown(result)
    row = "| worker end to end, 1 process, reference events (file://) | 81.2 | 0.812 of limit |"
    assert row in md
    thread = "on a thread (SCANSTREAM_COMPUTE_PROCESS=false) | 120.0 | 1.2 of limit; 3x naive |"
    assert thread in md
