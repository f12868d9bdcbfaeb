"""The pipe to the compute process: answers reach their own callers, whatever thread reads
them; a child that dies or hangs shows as such in every call it owed, never as a wait for ever."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.errors import Rejection
from worker.runtime.child import PIPE_BYTES, Child, ChildDied, widen


def _nothing() -> None:
    """The children's start-up here: nothing to load."""


def _slow_echo(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def _raise() -> None:
    raise Rejection("not_dicom", "raised in the child")


def _die() -> None:
    os._exit(139)  # as a decoder's segfault would


def _die_on_cue(folder: str) -> None:
    """Says it has started, then dies once told to."""
    (Path(folder) / "started").touch()
    while not (Path(folder) / "die").exists():
        time.sleep(0.01)
    _die()


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never came"
        time.sleep(0.01)


def _hang() -> None:
    time.sleep(3600)


def _hang_in(folder: str) -> None:
    """Says it has started, then hangs."""
    (Path(folder) / "started").touch()
    _hang()


def _unpicklable() -> object:
    return threading.Lock()


def _remember(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


@pytest.fixture
def child() -> Iterator[Child]:
    with Child(_nothing, ()) as started:
        yield started


def test_each_caller_gets_its_own_answer_whichever_thread_reads_it(child: Child) -> None:
    # The first call is the slowest: the callers after it wait behind it in the child, and
    # one of them reads its answer first, which it must hand over, not take.
    delays = [0.3, 0.0, 0.1, 0.0, 0.05, 0.0]
    with ThreadPoolExecutor(len(delays)) as threads:
        futures = [
            threads.submit(child.call, _slow_echo, i, seconds, timeout_s=60)
            for i, seconds in enumerate(delays)
        ]
        assert [f.result() for f in futures] == list(range(len(delays)))
    assert child._filed == {}


def test_an_exception_in_the_child_is_raised_in_the_caller_and_the_child_goes_on(
    child: Child,
) -> None:
    with pytest.raises(Rejection, match="raised in the child") as raised:
        child.call(_raise, timeout_s=60)
    assert raised.value.reason == "not_dicom"
    [note] = raised.value.__notes__  # where it was raised, for the log line of a bug
    assert note.startswith("in the compute process:") and "in _raise" in note
    with pytest.raises(RuntimeError, match="unpicklable answer"):
        child.call(_unpicklable, timeout_s=60)
    assert child.call(_slow_echo, 7, 0.0, timeout_s=60) == 7


def test_a_child_that_dies_fails_every_call_it_owed(child: Child, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as threads:
        dying = threads.submit(child.call, _die_on_cue, str(tmp_path), timeout_s=60)
        _wait_for(tmp_path / "started")
        behind = threads.submit(child.call, _slow_echo, 1, 0.0, timeout_s=60)
        (tmp_path / "die").touch()
        with pytest.raises(ChildDied):
            dying.result()
        with pytest.raises(ChildDied):
            behind.result()
    with pytest.raises(ChildDied):  # and any call after: none waits for an answer
        child.call(_slow_echo, 2, 0.0, timeout_s=60)


def test_a_call_past_its_time_raises_and_leaves_the_child_to_the_caller(child: Child) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        child.call(_hang, timeout_s=0.5)
    assert time.monotonic() - started < 30
    assert child.process.is_alive()
    child.kill()
    with pytest.raises(ChildDied):
        child.call(_slow_echo, 1, 0.0, timeout_s=60)


def test_close_stops_the_child_and_kills_one_that_does_not_stop(tmp_path: Path) -> None:
    with Child(_nothing, ()) as polite:
        pid = polite.call(os.getpid, timeout_s=60)
    assert pid != os.getpid()
    assert polite.process.exitcode == 0  # it read the end of its calls and left

    stubborn = Child(_nothing, ())
    with ThreadPoolExecutor(1) as thread:
        hanging = thread.submit(stubborn.call, _hang_in, str(tmp_path), timeout_s=None)
        _wait_for(tmp_path / "started")  # the hang is in the child now
        started = time.monotonic()
        stubborn.close(grace_s=0.5)
        assert time.monotonic() - started < 30
        assert stubborn.process.exitcode == -9  # SIGKILL
        with pytest.raises(ChildDied):
            hanging.result(timeout=30)


def test_the_child_runs_its_start_up_before_any_call(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with Child(_remember, (str(marker),)) as child:
        assert child.call(os.getpid, timeout_s=60) == int(marker.read_text()) == child.pid


def test_the_pipes_hold_a_megabyte(child: Child) -> None:
    ends = [child._calls, child._answers]
    assert [fcntl.fcntl(end.fileno(), 1032) for end in ends] == [PIPE_BYTES] * 2  # F_GETPIPE_SZ
    assert widen(object()) == 0  # type: ignore[arg-type]  # not a pipe: left alone
