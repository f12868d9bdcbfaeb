"""A chunk's event bytes on their way to the compute process, through a file in shared memory.

Through a pipe, a chunk of 512x512 slices (megabytes) goes 1 MiB at a time: the child, done
with one chunk, reads the next one's first MiB and then waits for the worker's writing thread,
which needs the interpreter lock that Kafka's threads hold, to write each further MiB (measured
with the process pool the child once ran in: 2 to 6 ms of idle child between chunks of about 50
ms). Here the worker writes the
bytes into one file under ``/dev/shm`` (RAM) before it submits the chunk, in one ``writev`` that
releases the lock, and the pipe carries only the events' ids, times and sizes; the child opens
the file, removes its name at once and reads each event's bytes from it.

Nothing is left behind: the child removes the file as soon as it has read it, and the worker
removes it again once the chunk is answered (or its child died or hung). A worker killed
outright (SIGKILL, the OOM killer) leaves the files of the chunks its child had not read yet (at
most two: the child, orphaned, exits without reading them); the next worker to start removes
them (:func:`sweep`), before they could fill a container's ``/dev/shm`` crash after crash. Where
``/dev/shm`` is missing or full (a container's is 64 MiB unless the pod mounts more), the bytes
go through the pipe as before, and one INFO line says so.

>>> from worker.contract import ScanEvent
>>> events = [ScanEvent("a", 0.0, data=b"DICM"), ScanEvent("b", 0.0, uri="file:///x.dcm")]
>>> stripped, parcel = pack(events)
>>> [e.data for e in stripped], parcel.sizes
([None, None], (4, None))
>>> [e.data for e in unpack(stripped, parcel)] == [b"DICM", None]
True
>>> discard(parcel)  # the worker's own clean-up: nothing left to remove
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from worker.contract import ScanEvent

log = logging.getLogger(__name__)

#: Where the parcels go: RAM on Linux (tmpfs), and in every Kubernetes pod.
SHARED_MEMORY: Final = Path("/dev/shm")
PREFIX: Final = "scanstream-chunk-"


@dataclass(frozen=True)
class Parcel:
    """Where a chunk's bytes wait for the child: ``path`` (None: they travel in the events)
    and each event's size in it (None: an event without inline bytes, e.g. a reference)."""

    path: str | None
    sizes: tuple[int | None, ...]


_warned = False
# When this process started, near enough: before it wrote any parcel (sweep).
_STARTED: Final = time.time() - 1.0


def pack(
    events: Sequence[ScanEvent], directory: Path = SHARED_MEMORY
) -> tuple[list[ScanEvent], Parcel]:
    """The events without their bytes, and the parcel that holds the bytes; the events as they
    are (and a parcel without a path) where the file cannot be written."""
    sizes = tuple(None if e.data is None else len(e.data) for e in events)
    chunks = [e.data for e in events if e.data is not None]
    if not chunks:
        return list(events), Parcel(None, sizes)
    path = directory / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    try:
        _write(path, chunks)
    except OSError as exc:
        _fall_back(path, exc)
        return list(events), Parcel(None, sizes)
    stripped = [dataclasses.replace(e, data=None) if e.data is not None else e for e in events]
    return stripped, Parcel(str(path), sizes)


def _write(path: Path, chunks: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        views = [memoryview(c) for c in chunks if len(c)]  # an empty value writes nothing
        while views:  # writev may write less than asked: go on from where it stopped
            written = os.writev(fd, views[:1024])  # at most IOV_MAX buffers a call
            if written <= 0:
                raise OSError(f"writev wrote nothing to {path}")
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if written:
                views[0] = views[0][written:]
    finally:
        os.close(fd)


def _fall_back(path: Path, exc: OSError) -> None:
    global _warned
    discard(Parcel(str(path), ()))
    if not _warned:
        _warned = True
        log.info("compute chunks go through the pipe, not %s: %s", path.parent, exc)


def unpack(events: Sequence[ScanEvent], parcel: Parcel) -> list[ScanEvent]:
    """The child's side: the events with their bytes again; removes the parcel's file."""
    if parcel.path is None:
        return list(events)
    with open(parcel.path, "rb") as f:
        discard(parcel)  # the open file stays readable; the name goes at once
        restored = []
        for event, size in zip(events, parcel.sizes, strict=True):
            data = None if size is None else f.read(size)
            if data is not None and len(data) != size:
                raise OSError(f"{parcel.path} ended before event {event.event_id}'s bytes")
            restored.append(event if data is None else dataclasses.replace(event, data=data))
    return restored


def sweep(directory: Path = SHARED_MEMORY) -> int:
    """Remove the parcels that dead workers left behind; how many were removed.

    A parcel's name holds the pid of the worker that wrote it. Removed: those of a pid that is
    not running, and those of this process's own pid written before this process started (a
    worker restarted in a container usually gets its predecessor's pid again, often 1). Kept:
    those of any other running process, e.g. another worker on the same machine, and this
    process's own. (Two containers that share one ``/dev/shm`` but not their pids could take
    each other's parcels for dead ones: give each its own.)

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("old", "new"):  # this process's: a predecessor's, and its own
    ...     _ = (d / f"{PREFIX}{os.getpid()}-{name}").write_bytes(b"x")
    >>> os.utime(d / f"{PREFIX}{os.getpid()}-old", (0, 0))
    >>> _ = (d / f"{PREFIX}{2**22 + 1}-0").write_bytes(b"x")  # a pid beyond pid_max: dead
    >>> sweep(d), [p.name.rsplit("-", 1)[1] for p in d.iterdir()]
    (2, ['new'])
    """
    removed = 0
    try:
        names = [p for p in directory.iterdir() if p.name.startswith(PREFIX)]
    except OSError:  # no /dev/shm: nothing was ever written there
        return 0
    for path in names:
        pid_text = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if pid == os.getpid():
                if path.stat().st_mtime >= _STARTED:
                    continue  # this process's own, in flight
            elif _running(pid):
                continue
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d chunk files that stopped workers left in %s", removed, directory)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    except OverflowError:
        return False
    return True


def discard(parcel: Parcel) -> None:
    """Remove the parcel's file, if it is still there."""
    if parcel.path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parcel.path)
