"""The pipeline in a process of its own, so that compute and Kafka stop sharing one GIL.

In one process, the compute thread (pydicom, numpy glue, the feature loops' Python) and
kafka-python's threads (socket reads, record parsing, produce, commit) take turns on one
interpreter lock: at saturation each waits for the other, and a two-core machine runs at about
one core's speed. With ``SCANSTREAM_COMPUTE_PROCESS=true`` the worker's compute thread hands each
chunk to :class:`ProcessPipeline`, which runs the very same :class:`~worker.pipeline.Pipeline`
in one child process (``spawn``: no fork of a process that has threads) and waits for its
outcomes with the GIL released. The loop, its flow control and its delivery do not change:
they see a pipeline whose ``process`` returns the same outcomes.

What crosses the pipe: the chunk's events (their bytes, once) and the outcomes without the
events' bytes (the parent puts its own events back). The child loads the models itself.

A child that dies (a decoder's segfault on a hostile record, the kernel's OOM killer) does not
take the worker with it: its chunk is computed again one event at a time in a fresh child, and
an event that kills that one too becomes a dead letter (``internal_error``) while the others
get their findings. A chunk is never retried more than that: a poison record is set aside.

>>> from worker.contract import ScanEvent
>>> from worker.settings import Settings
>>> with ProcessPipeline(Settings()) as pipeline:
...     [o.reason for o in pipeline.process([ScanEvent("e1", 0.0, data=b"not dicom")])]
['not_dicom']
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from worker.contract import ScanEvent
from worker.errors import Rejection
from worker.imaging import ImagingConfig
from worker.pipeline import Outcome, Pipeline
from worker.settings import Settings

log = logging.getLogger(__name__)

Sources = Sequence[dict[str, Any] | None] | None
Target = Callable[[Sequence[ScanEvent], Sources], list[Outcome]]

_pipeline: Pipeline | None = None  # the child's own, built once by _start_child


def _start_child(settings: Settings, imaging: ImagingConfig) -> None:
    """Runs first in the child: logs and allocator as in the parent, then models and pipeline.

    Ctrl-C reaches the whole process group: the child ignores it, and stops when the parent,
    having finished its batch, shuts it down."""
    global _pipeline
    from worker.runtime import allocator, jsonlog
    from worker.runtime.service import load_models

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jsonlog.setup(settings.log_level)
    allocator.tune(settings.malloc_tune)
    _pipeline = Pipeline(load_models(settings), settings, imaging)


def run_pipeline(events: Sequence[ScanEvent], sources: Sources) -> list[Outcome]:
    """The child's work: the pipeline's outcomes, without the events' bytes (the parent has
    them already; sending them back would double what crosses the pipe)."""
    assert _pipeline is not None, "the compute process was not started"
    return [
        dataclasses.replace(o, event=dataclasses.replace(o.event, data=None))
        for o in _pipeline.process(events, sources)
    ]


class ProcessPipeline:
    """A :class:`~worker.pipeline.Pipeline` stand-in whose ``process`` runs in a child process
    (see the module docstring). ``target`` is what the child runs; tests give it one that dies
    on cue. Close it (or use it as a context manager) to stop the child."""

    def __init__(
        self,
        settings: Settings,
        imaging: ImagingConfig = ImagingConfig(),
        target: Target = run_pipeline,
    ) -> None:
        self.settings, self.imaging, self._target = settings, imaging, target
        self._pool = self._new_pool()
        # Start the child now: a model that fails to load fails the worker's start, not its
        # first event, and the first event does not wait for the models.
        self._pool.submit(int).result()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(self.settings, self.imaging),
        )

    def process(self, events: Sequence[ScanEvent], sources: Sources = None) -> list[Outcome]:
        """One outcome per event, in order, as :meth:`Pipeline.process`; never raises for an
        event's sake, even one that kills the child."""
        try:
            computed = self._pool.submit(self._target, list(events), sources).result()
        except BrokenProcessPool:
            self._restart(f"while computing {len(events)} events")
            computed = [self._alone(event, sources, i) for i, event in enumerate(events)]
        return [dataclasses.replace(o, event=e) for o, e in zip(computed, events, strict=True)]

    def _alone(self, event: ScanEvent, sources: Sources, i: int) -> Outcome:
        """``event`` in a child of its own making; a dead letter if the child dies again."""
        one = None if sources is None else [sources[i]]
        try:
            return self._pool.submit(self._target, [event], one).result()[0]
        except BrokenProcessPool:
            self._restart(f"on event {event.event_id} alone")
            detail = "the compute process died on this event (twice: with its chunk and alone)"
            return Outcome(event, rejection=Rejection("internal_error", detail))

    def _restart(self, when: str) -> None:
        log.error("the compute process died %s: starting a new one", when)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
