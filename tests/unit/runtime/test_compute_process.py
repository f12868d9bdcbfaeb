"""The pipeline in a child process: the same outcomes as in the worker's own, and a child that
dies on a record costs that record alone (a dead letter), never the worker or the chunk."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.contract import ScanEvent
from worker.errors import ModelError, Rejection
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import Outcome, Pipeline
from worker.runtime.compute_process import ProcessPipeline, Sources, run_pipeline
from worker.settings import Settings

DIE = b"kill the compute process"
HANG = b"hang the compute process"


def die_on_cue(events: Sequence[ScanEvent], sources: Sources) -> tuple[list[Outcome], float]:
    """Runs in the child: dies as a segfaulting decoder would when a chunk holds DIE."""
    if any(e.data == DIE for e in events):
        os._exit(139)
    if any(e.data == HANG for e in events):
        time.sleep(3600)  # as a native decoder's endless loop would
    return run_pipeline(events, sources)


def _events() -> list[ScanEvent]:
    lesion = Lesion(row=60, col=64, radius=6, contrast_hu=150)
    good = encode_ct(ct_slice(8, 128, lesion), study="s", instance=1)
    return [
        ScanEvent("good", 0.0, data=good),
        ScanEvent("text", 0.0, data=b"not dicom at all"),
        ScanEvent("cut", 0.0, data=good[:300]),
    ]


def test_a_rejection_survives_the_trip_between_processes() -> None:
    back = pickle.loads(pickle.dumps(Rejection("truncated", "ends  at\nbyte 300")))
    assert isinstance(back, Rejection)
    assert (back.reason, back.detail, str(back)) == ("truncated", "ends at byte 300", str(back))


def test_a_child_that_cannot_load_its_models_fails_the_start_with_the_reason() -> None:
    with pytest.raises(ModelError, match="/nonexistent/models: models directory does not exist"):
        ProcessPipeline(Settings(models_dir="/nonexistent/models"))


def test_the_child_gives_the_outcomes_of_the_worker_s_own_pipeline() -> None:
    events, settings = _events(), Settings()
    sources = [{"topic": "t", "partition": 0, "offset": i} for i in range(len(events))]
    here = Pipeline(ModelSet.load(), settings).process(events, sources)
    with ProcessPipeline(settings) as child:
        there = child.process(events, sources)
    assert [o.reason for o in there] == [o.reason for o in here] == [None, "not_dicom", "truncated"]
    assert [o.event for o in there] == events  # the parent's own events, bytes and all
    assert there[0].finding is not None and here[0].finding is not None
    for key in ("classifications", "edges", "frames", "image", "sop_instance_uid", "models"):
        assert there[0].finding[key] == here[0].finding[key], key
    assert [a["label"] for a in there[0].alerts] == [a["label"] for a in here[0].alerts]


@pytest.mark.timeout(180)
def test_a_record_that_kills_the_child_is_set_aside_and_the_rest_computed() -> None:
    good, text, cut = _events()
    deadly = ScanEvent("deadly", 0.0, data=DIE)
    with ProcessPipeline(Settings(), target=die_on_cue) as child:
        outcomes = child.process([good, deadly, text, cut])
        assert [o.reason for o in outcomes] == [None, "internal_error", "not_dicom", "truncated"]
        assert outcomes[1].rejection is not None
        assert "died on this event" in outcomes[1].rejection.detail
        assert outcomes[1].event is deadly
        # The child that replaced the dead one goes on computing.
        assert [o.reason for o in child.process([text, good])] == ["not_dicom", None]


@pytest.mark.timeout(180)
def test_two_chunks_in_the_child_when_one_kills_it_only_its_culprit_is_set_aside() -> None:
    """The worker keeps two chunks in the child (two threads): the innocent one, which died
    with the culprit's, is computed again and loses nothing."""
    good, text, _ = _events()
    deadly = ScanEvent("deadly", 0.0, data=DIE)
    with ProcessPipeline(Settings(), target=die_on_cue) as child, ThreadPoolExecutor(2) as threads:
        innocent = threads.submit(child.process, [good, text] * 3)
        culprit = threads.submit(child.process, [text, deadly, good])
        first, second = innocent.result(), culprit.result()
    assert [o.reason for o in first] == [None, "not_dicom"] * 3
    assert [o.reason for o in second] == ["not_dicom", "internal_error", None]


def test_the_child_reports_its_own_compute_time_to_the_calling_thread() -> None:
    """The worker sizes chunks by the child's time, not by its own wait (which includes the
    other chunk's turn in the child)."""
    with ProcessPipeline(Settings()) as child:
        assert child.compute_seconds() is None
        child.process(_events()[:1])
        seconds = child.compute_seconds()
        elsewhere: list[float | None] = []
        thread = threading.Thread(target=lambda: elsewhere.append(child.compute_seconds()))
        thread.start()
        thread.join()
    assert seconds is not None and 0 < seconds < 30
    assert elsewhere == [None]


ORPHAN = """
import sys, time
from worker.runtime.compute_process import ProcessPipeline
from worker.settings import Settings
if __name__ == "__main__":
    pipeline = ProcessPipeline(Settings())
    print(pipeline.child_pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_the_child_exits_when_the_worker_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL gives the worker no chance to stop its child: the child notices by itself."""
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as worker:
        try:
            assert worker.stdout is not None
            child = int(worker.stdout.readline())
            assert _alive(child)  # alive while the worker is
            worker.kill()
            worker.wait()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(child):
                time.sleep(0.1)
            assert not _alive(child), "the compute process outlived its worker"
        finally:
            worker.kill()


def _alive(pid: int) -> bool:
    """Running (or sleeping): neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.timeout(180)
def test_a_record_that_hangs_the_child_is_killed_and_becomes_a_timeout() -> None:
    good, text, _ = _events()
    stuck = ScanEvent("stuck", 0.0, data=HANG)
    settings = Settings(event_timeout_s=1.0)
    with ProcessPipeline(settings, target=die_on_cue) as child:
        assert child.hard_limit_s(3) == 4.0
        outcomes = child.process([good, stuck, text])
        assert [o.reason for o in outcomes] == [None, "timeout", "not_dicom"]
        assert outcomes[1].rejection is not None
        assert "did not answer in 2 s" in outcomes[1].rejection.detail
        # Alone from the start, it is the culprit at once: killed once, not tried again.
        children = child._generation
        [alone] = child.process([stuck])
        assert alone.reason == "timeout" and child._generation == children + 1
        assert [o.reason for o in child.process([good])] == [None]


@pytest.mark.internal_error_expected  # the child is killed on purpose
def test_a_child_that_cannot_be_started_again_stops_the_worker_with_the_reason(
    tmp_path: Path,
) -> None:
    """The models went away under the running worker, then a record killed its child: the
    replacement cannot load them. That is the worker's misconfiguration, not the events':
    a ModelError that stops it (its uncommitted chunk replays), not a dead letter for every
    event after."""
    import shutil

    from worker.inference import cards

    models = tmp_path / "models"
    shutil.copytree(cards.default_models_dir(), models)
    with ProcessPipeline(Settings(models_dir=str(models)), target=die_on_cue) as pipeline:
        assert pipeline.process(_events()[:1])[0].rejection is None
        shutil.rmtree(models)
        with pytest.raises(ModelError, match="models directory does not exist"):
            pipeline.process([ScanEvent("deadly", 0.0, data=DIE)])
