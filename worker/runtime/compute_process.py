"""The pipeline in a process of its own, so that compute and Kafka stop sharing one GIL.

In one process, the compute thread (pydicom, numpy glue, the feature loops' Python) and
kafka-python's threads (socket reads, record parsing, produce, commit) take turns on one
interpreter lock: at saturation each waits for the other, and a two-core machine runs at about
one core's speed. So by default (``SCANSTREAM_COMPUTE_PROCESS=true``; false keeps the compute in
the worker's own process) the worker's compute thread hands each chunk to
:class:`ProcessPipeline`, which runs the very same :class:`~worker.pipeline.Pipeline` in one child
process (``spawn``: no fork of a process that has threads) and waits for its
outcomes with the GIL released. The loop, its flow control and its delivery do not change:
they see a pipeline whose ``process`` returns the same outcomes.

What crosses the pipe: the chunk's events, their bytes in a file under ``/dev/shm`` instead
(:mod:`worker.runtime.handoff`), and the outcomes without the events' bytes (the parent puts
its own events back). The child loads the models itself. The worker keeps two chunks in the
child (two compute threads here), so that it goes from one to the next without waiting for this
process; chunks are sized by the child's own compute time
(:meth:`ProcessPipeline.compute_seconds`). Each calling thread writes its chunk to the child's
pipe and reads the answer itself (:mod:`worker.runtime.child`), with no executor's threads in
between.

Measured on 2 cores (README, Benchmarks): 1.2x the in-thread worker's saturation rate, for a
second process of about 320 MB and about 1.2 s more at start. Partial versions gained nothing
or little in the same A/B runs: one chunk at a time (with 64 KiB or 1 MiB pipes), and two
chunks sized by the wall time here (which shrank the chunks).

A child that dies (a decoder's segfault on a hostile record; the kernel's OOM killer, when it
picks the child) does not take the worker with it: its chunk is computed again one event at a
time in a fresh child, and an event that kills that one too becomes a dead letter
(``internal_error``) while the others get their findings. A chunk is never retried more than
that: a poison record is set aside. A child that hangs (a native call that never returns) is
killed past :meth:`hard_limit_s` and treated the same way; the event that hangs becomes a
``timeout`` dead letter.

>>> from worker.contract import ScanEvent
>>> from worker.settings import Settings
>>> with ProcessPipeline(Settings()) as pipeline:
...     [o.reason for o in pipeline.process([ScanEvent("e1", 0.0, data=b"not dicom")])]
['not_dicom']
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from worker.contract import ScanEvent
from worker.errors import ModelError, Rejection, ScanStreamError
from worker.imaging import ImagingConfig
from worker.pipeline import Outcome, Pipeline
from worker.runtime import handoff
from worker.runtime.child import Child, ChildDied
from worker.settings import Settings

log = logging.getLogger(__name__)

Sources = Sequence[dict[str, Any] | None] | None
Target = Callable[[Sequence[ScanEvent], Sources], tuple[list[Outcome], float]]

_pipeline: Pipeline | None = None  # the child's own, built once by _start_child
_start_error: ScanStreamError | None = None  # why the child could not build it


def _start_child(settings: Settings, imaging: ImagingConfig) -> None:
    """Runs first in the child: logs and allocator as in the parent, then models and pipeline.

    Ctrl-C reaches the whole process group: the child ignores it, and stops when the parent,
    having finished its batch, shuts it down. A parent killed outright (SIGKILL, a crash) never
    does: the child then exits by itself (:mod:`worker.runtime.child`)."""
    global _pipeline, _start_error
    from worker.runtime import allocator, jsonlog
    from worker.runtime.service import load_models

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jsonlog.setup(settings.log_level)
    allocator.tune(settings.malloc_tune)
    try:
        _pipeline = Pipeline(load_models(settings), settings, imaging)
    except ScanStreamError as exc:  # a misconfiguration: the parent fails its start with it
        _start_error = exc


def _started() -> None:
    """The parent's first call: raises the error that kept the child from its pipeline (a
    models directory that is not there, a GPU required and missing), so that the worker fails
    its start with that message instead of a traceback from the pool's initializer."""
    if _start_error is not None:
        raise _start_error


def _model_infos() -> list[dict[str, str]]:
    assert _pipeline is not None, "the compute process was not started"
    return _pipeline.models.model_infos()


def run_pipeline(events: Sequence[ScanEvent], sources: Sources) -> tuple[list[Outcome], float]:
    """The child's work: the pipeline's outcomes, without the events' bytes (the parent has
    them already; sending them back would double what crosses the pipe)."""
    if _pipeline is None:  # a replacement child that could not load the models
        raise _start_error or ModelError("the compute process has no pipeline")
    t0 = time.perf_counter()
    outcomes = _pipeline.process(events, sources)
    seconds = time.perf_counter() - t0
    return [
        dataclasses.replace(o, event=dataclasses.replace(o.event, data=None)) for o in outcomes
    ], seconds


def run_parcel(
    target: Target, events: Sequence[ScanEvent], parcel: handoff.Parcel, sources: Sources
) -> tuple[list[Outcome], float]:
    """The child's side of :meth:`ProcessPipeline.process`: the chunk's bytes from their parcel
    (:mod:`worker.runtime.handoff`), then ``target``."""
    return target(handoff.unpack(events, parcel), sources)


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
        handoff.sweep()  # what a worker killed before this one left in /dev/shm
        self._child = Child(_start_child, (settings, imaging))
        self._state = threading.Condition()
        self._running = 0  # chunks in the child now
        self._solo = False  # a recovery has the child to itself
        self._generation = 0  # children started and replaced so far
        self._local = threading.local()  # per calling thread: its last chunk's compute time
        self._in_child = 0  # events submitted to the child and not yet answered
        # Start the child now: a model that fails to load fails the worker's start, not its
        # first event, and the first event does not wait for the models.
        try:
            self._child.call(_started, timeout_s=None)
        except ScanStreamError:
            self._child.close()
            raise
        except ChildDied as exc:
            self._child.close()
            raise ModelError(
                "the compute process (SCANSTREAM_COMPUTE_PROCESS=true) failed to start: its log "
                "lines above say why"
            ) from exc

    @property
    def child_pid(self) -> int | None:
        """The compute process's pid (it changes when a dead child is replaced)."""
        return self._child.pid

    def model_infos(self) -> list[dict[str, str]]:
        """The child's models (name, version, execution provider): the worker's metrics show
        these, so that the parent need not load models (on a GPU, a second CUDA context)."""
        infos: list[dict[str, str]] = self._child.call(_model_infos, timeout_s=None)
        return infos

    def compute_seconds(self) -> float | None:
        """How long the child computed the calling thread's last chunk (None: unknown)."""
        seconds: float | None = getattr(self._local, "seconds", None)
        return seconds

    def process(self, events: Sequence[ScanEvent], sources: Sources = None) -> list[Outcome]:
        """One outcome per event, in order, as :meth:`Pipeline.process`; never raises for an
        event's sake, even one that kills the child. Safe from several threads: the worker
        keeps two chunks in the child, so it goes from one to the next without waiting."""
        with self._state:
            self._state.wait_for(lambda: not self._solo)
            self._running += 1
            generation, child = self._generation, self._child
            # What is ahead of this chunk in the child counts against its deadline too.
            self._in_child += len(events)
            limit_s = self.hard_limit_s(self._in_child)
        hung, parcel = False, handoff.Parcel(None, ())
        try:
            stripped, parcel = handoff.pack(events)
            computed, self._local.seconds = child.call(
                run_parcel, self._target, stripped, parcel, sources, timeout_s=limit_s
            )
        except ChildDied:
            computed, self._local.seconds = None, None
        except TimeoutError:
            self._kill(child, f"{len(events)} events took over {limit_s:.0f} s")
            computed, self._local.seconds, hung = None, None, True
        finally:
            handoff.discard(parcel)  # the child removed it, unless it died or hung first
            with self._state:
                self._running -= 1
                self._in_child -= len(events)
                self._state.notify_all()
        if computed is None:
            computed = self._recover(events, sources, generation, limit_s if hung else None)
        return [dataclasses.replace(o, event=e) for o, e in zip(computed, events, strict=True)]

    def _recover(
        self,
        events: Sequence[ScanEvent],
        sources: Sources,
        generation: int,
        hung_s: float | None = None,
    ) -> list[Outcome]:
        """The child died with ``events`` in it (they, or another chunk in it then, killed it):
        each event alone in a child that nothing else uses, so a death says which one. A lone
        event that hung past its limit (``hung_s``) is the culprit already: not tried again."""
        with self._state:
            self._state.wait_for(lambda: not self._solo)
            self._solo = True  # no new chunk enters the child until this recovery is done
        try:
            with self._state:
                self._state.wait_for(lambda: self._running == 0)
                if self._generation == generation:  # not yet replaced by another recovery
                    self._restart(f"while computing {len(events)} events")
            if hung_s is not None and len(events) == 1:
                detail = f"the compute process did not answer in {hung_s:.0f} s"
                return [Outcome(events[0], rejection=Rejection("timeout", detail))]
            return [self._alone(event, sources, i) for i, event in enumerate(events)]
        finally:
            with self._state:
                self._solo = False
                self._state.notify_all()

    def hard_limit_s(self, events: int) -> float:
        """The longest the child may take for ``events`` before it is killed: each event's own
        budget (``event_timeout_s``, which the pipeline checks between stages) and up to 10 s
        more for the stage the last one may end in. Only a native call that never returns (a
        decoder's endless loop) reaches it: with the defaults, a lone event is killed after 70 s,
        before /healthz would report the stall (120 s) and a liveness probe restart the pod
        into the same event."""
        budget = self.settings.event_timeout_s
        return events * budget + min(budget, 10.0)

    def _alone(self, event: ScanEvent, sources: Sources, i: int) -> Outcome:
        """``event`` alone in the child; a dead letter if the child dies or hangs again."""
        one = None if sources is None else [sources[i]]
        limit_s = self.hard_limit_s(1)
        try:
            outcomes, _ = self._child.call(self._target, [event], one, timeout_s=limit_s)
            outcome: Outcome = outcomes[0]
            return outcome
        except ChildDied:
            self._restart(f"on event {event.event_id} alone")
            detail = "the compute process died on this event (twice: with its chunk and alone)"
            return Outcome(event, rejection=Rejection("internal_error", detail))
        except TimeoutError:
            self._kill(self._child, f"event {event.event_id} alone took over {limit_s:.0f} s")
            self._restart(f"on event {event.event_id} alone")
            detail = f"the compute process did not answer in {limit_s:.0f} s (with its chunk too)"
            return Outcome(event, rejection=Rejection("timeout", detail))

    @staticmethod
    def _kill(child: Child, why: str) -> None:
        """Kill the child (its other calls then fail as if it had died)."""
        log.error("the compute process hangs (%s): killing it", why)
        child.kill()

    def _restart(self, when: str) -> None:
        """Replace a dead child. One that cannot load the models (they were removed or changed
        under the running worker, a GPU required is gone) is a :class:`ModelError`: the worker
        stops with it, as it would fail its start, instead of dead-lettering every event after
        (its chunks in flight are not committed: the next worker computes them)."""
        log.error("the compute process died %s: starting a new one", when)
        self._child.close()
        self._child = Child(_start_child, (self.settings, self.imaging))
        self._generation += 1
        # Started before anything is timed in it: its start-up is not a chunk's compute.
        try:
            self._child.call(_started, timeout_s=None)
        except ScanStreamError as exc:
            raise ModelError(f"the compute process could not be started again: {exc}") from exc
        except ChildDied as exc:
            raise ModelError(
                "the compute process could not be started again: its log lines above say why"
            ) from exc

    def close(self) -> None:
        self._child.close()

    def __enter__(self) -> ProcessPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
