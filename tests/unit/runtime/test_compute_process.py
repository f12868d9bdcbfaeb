"""The pipeline in a child process: the same outcomes as in the worker's own, and a child that
dies on a record costs that record alone (a dead letter), never the worker or the chunk."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence

import pytest

from worker.contract import ScanEvent
from worker.errors import Rejection
from worker.inference import ModelSet
from worker.phantoms import Lesion, ct_slice, encode_ct
from worker.pipeline import Outcome, Pipeline
from worker.runtime.compute_process import ProcessPipeline, Sources, run_pipeline
from worker.settings import Settings

DIE = b"kill the compute process"


def die_on_cue(events: Sequence[ScanEvent], sources: Sources) -> list[Outcome]:
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
