"""One child process and the two pipes to it: calls there, answers back, nothing in between.

The compute process (:mod:`worker.runtime.compute_process`) once went through a
``ProcessPoolExecutor``: a chunk went from the calling thread to the executor's manager thread,
from it to its queue's feeder thread, which wrote it to the pipe; the answer came back through
the manager thread again. Each of those threads needs the interpreter lock to take its turn,
which the consumer loop and Kafka's own threads hold much of the time: measured in a running
worker at half load, 1.7 to 2.6 ms from the call to the child's first byte, and 0.7 to 0.9 ms
back, for a chunk of one or two events that computes in 9 to 12 ms. Here the calling thread
writes its call to the pipe itself and reads the answers itself: no thread between. Measured
against the executor in interleaved rounds, that moved neither the half-load latency nor the
saturation rate beyond this machine's noise (README, Benchmarks, fourth session); it is kept
because it no longer reaches into the executor's private attributes (``_processes`` to kill a
hung child, ``_call_queue`` and ``_result_queue`` to widen its pipes).

Calls are answered in the order they were written (the child computes one at a time); several
threads may call at once, and whichever reads an answer that is not its own files it for its
caller. A child that dies (a decoder's segfault, the OOM killer) shows as :class:`ChildDied` in
every call it owed; one that does not answer in time as :class:`TimeoutError` in the caller,
which then decides to :meth:`Child.kill` it.

>>> import operator, time
>>> with Child(time.sleep, (0,)) as child:  # its start-up: sleep(0)
...     child.call(operator.add, 2, 3, timeout_s=60)
5
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

log = logging.getLogger(__name__)

#: Linux's F_SETPIPE_SZ, and the size asked for: an unprivileged process may go up to
#: /proc/sys/fs/pipe-max-size, 1 MiB by default.
_F_SETPIPE_SZ: Final = 1031
PIPE_BYTES: Final = 1 << 20


class ChildDied(Exception):
    """The child exited, or was killed, before it answered a call."""


def widen(*ends: Connection) -> int:
    """Give pipe ends 1 MiB buffers instead of 64 KiB; returns how many took it.

    A chunk whose bytes could not go through shared memory (:mod:`worker.runtime.handoff`) is
    megabytes: through 64 KiB, writer and reader take turns per 64 KiB, each turn a wake-up
    (measured: the child spent a fifth of its time in ``recv``). Best effort: anything
    unexpected leaves the default size, with a DEBUG line."""
    widened = 0
    try:
        import fcntl

        for end in ends:
            fcntl.fcntl(end.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
            widened += 1
    except (ImportError, AttributeError, OSError) as exc:
        log.debug("compute pipes keep their default size: %r", exc)
    return widened


def _serve(
    calls: Connection, answers: Connection, parent: int, start: Callable[..., None], args: Any
) -> None:
    """The child's whole life: ``start(*args)``, then each call in order until the worker
    closes its end of ``calls``. An exception a call raises goes back as its answer."""
    threading.Thread(target=exit_with, args=(parent,), daemon=True, name="parent-watch").start()
    start(*args)
    while True:
        try:
            seq, function, call_args = pickle.loads(calls.recv_bytes())
        except EOFError:  # the worker closed its end, or is gone: nothing more will come
            return
        try:
            answer: tuple[int, bool, Any, str] = (seq, True, function(*call_args), "")
        except Exception as exc:  # noqa: BLE001 - the caller's to judge, as a call's would be
            # The traceback does not cross: its text does, for the log line of a bug.
            answer = (seq, False, exc, traceback.format_exc().rstrip())
        try:
            payload = pickle.dumps(answer)
        except Exception as exc:  # noqa: BLE001 - cannot cross: say so instead of dying
            failed = RuntimeError(f"unpicklable answer: {exc!r}")
            payload = pickle.dumps((seq, False, failed, traceback.format_exc().rstrip()))
        answers.send_bytes(payload)


class Child:
    """A spawned process that runs ``start(*args)`` once, then the calls it is given.

    ``spawn``, not ``fork``: the worker has threads (Kafka's, the loop's), and a fork copies
    their locks in whatever state they are in. The child gets only its own ends of the pipes,
    so a worker that dies closes them: the child reads the end of its calls and exits."""

    def __init__(self, start: Callable[..., None], args: tuple[Any, ...]) -> None:
        context = multiprocessing.get_context("spawn")
        their_calls, self._calls = context.Pipe(duplex=False)
        self._answers, their_answers = context.Pipe(duplex=False)
        widen(their_calls, self._calls, self._answers, their_answers)
        self.process = context.Process(
            target=_serve,
            args=(their_calls, their_answers, os.getpid(), start, args),
            name="scanstream-compute",
            daemon=True,  # never outlives an interpreter that exits without close()
        )
        self.process.start()
        their_calls.close()  # only the child holds these now: its death closes them
        their_answers.close()
        self._sequence = itertools.count()
        self._sending = threading.Lock()
        self._reading = threading.Lock()
        self._filed: dict[int, tuple[bool, Any, str]] = {}  # answers read by another caller
        self._dead = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def call(self, function: Callable[..., Any], *args: Any, timeout_s: float | None) -> Any:
        """``function(*args)`` in the child: its value, or the exception it raised. Raises
        :class:`ChildDied` if the child is gone before it answers, TimeoutError past
        ``timeout_s`` (None: no limit; the child is left as it is: :meth:`kill` it)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        payload = pickle.dumps((seq := next(self._sequence), function, args))
        try:
            with self._sending:
                if self._dead:
                    raise ChildDied("the compute process was gone before the call")
                self._calls.send_bytes(payload)
        except OSError as exc:  # EPIPE: it died with the pipe's far end
            raise ChildDied("the compute process is gone") from exc
        ok, value, where = self._answer(seq, deadline)
        if not ok:
            value.add_note(f"in the compute process:\n{where}")
            raise value
        return value

    def _answer(self, seq: int, deadline: float | None) -> tuple[bool, Any, str]:
        """This call's answer: read from the pipe, or filed there by another caller that read
        it first. Answers come in the order of the calls, so a reader files the ones before its
        own and one of the calls after may wait behind it: never longer than its own."""
        while True:
            if not self._reading.acquire(timeout=-1 if deadline is None else _left(deadline)):
                raise TimeoutError("no answer from the compute process in time")
            try:
                if seq in self._filed:
                    return self._filed.pop(seq)
                if self._dead:
                    raise ChildDied("the compute process died before it answered")
                data = None
                try:  # closed under us (close() on another thread) counts as dead too
                    if self._answers.poll(None if deadline is None else _left(deadline)):
                        data = self._answers.recv_bytes()
                except (EOFError, OSError) as exc:
                    self._dead = True
                    raise ChildDied("the compute process died before it answered") from exc
                if data is None:  # (not raised inside the try: TimeoutError is an OSError)
                    raise TimeoutError("no answer from the compute process in time")
                answered, *answer = pickle.loads(data)
                if answered == seq:
                    return answer[0], answer[1], answer[2]
                self._filed[answered] = (answer[0], answer[1], answer[2])
            finally:
                self._reading.release()

    def kill(self) -> None:
        """Kill the child at once (its unanswered calls then fail with :class:`ChildDied`)."""
        self.process.kill()

    def close(self, grace_s: float = 30.0) -> None:
        """Stop the child: it finishes the call in hand, reads the end of its calls and exits;
        killed if it has not within ``grace_s``."""
        with self._sending:
            self._dead = True
            self._calls.close()
        self.process.join(grace_s)
        if self.process.is_alive():
            log.warning("the compute process did not stop in %.0f s: killing it", grace_s)
            self.process.kill()
            self.process.join()
        self._answers.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _left(deadline: float) -> float:
    """Seconds to ``deadline``, 0 once past it."""
    return max(0.0, deadline - time.monotonic())


def exit_with(parent: int, every_s: float = 0.5) -> None:
    """Exit when ``parent`` is gone (this process then has another parent): a child that is
    computing a long chunk when its worker is killed outright would otherwise finish it first."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)
