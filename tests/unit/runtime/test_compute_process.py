"""The pipeline in a child process: the same outcomes as in the worker's own, and a child that
dies on a record costs that record alone (a dead letter), never the worker or the chunk."""

from __future__ import annotations

import fcntl
import os
import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.contract import ScanEvent
from worker.errors import Rejection
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import Outcome, Pipeline
from worker.runtime.compute_process import (
    PIPE_BYTES,
    ProcessPipeline,
    Sources,
    run_pipeline,
    widen_pipes,
)
from worker.settings import Settings

DIE = b"kill the compute process"


def die_on_cue(events: Sequence[ScanEvent], sources: Sources) -> tuple[list[Outcome], float]:
    """Runs in the child: dies as a segfaulting decoder would when a chunk holds DIE."""
    if any(e.data == DIE for e in events):
        os._exit(139)
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


def test_the_pipes_to_the_child_hold_a_megabyte() -> None:
    with ProcessPipeline(Settings()) as child:
        pool = child._pool
        ends = [pool._call_queue._reader, pool._result_queue._writer]  # type: ignore[attr-defined]
        sizes = [fcntl.fcntl(end.fileno(), 1032) for end in ends]  # F_GETPIPE_SZ
    assert sizes == [PIPE_BYTES, PIPE_BYTES]
    assert widen_pipes(object()) == 0  # type: ignore[arg-type]  # not a pool: left alone
