"""A chunk's bytes cross to the compute process through a file in /dev/shm, and no file is
left behind: not after the child read it, not when the child died or hung first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.runtime.test_compute_process import DIE, HANG, _events, die_on_cue
from worker.contract import ScanEvent
from worker.runtime import handoff
from worker.runtime.compute_process import ProcessPipeline
from worker.settings import Settings


def _left(directory: Path = handoff.SHARED_MEMORY) -> list[Path]:
    return sorted(directory.glob(f"{handoff.PREFIX}{os.getpid()}-*"))


def test_bytes_come_back_whole_in_order_and_the_file_goes(tmp_path: Path) -> None:
    # More events than one writev takes (1,024 buffers), of several sizes, some without bytes.
    events = [
        ScanEvent(f"e{i}", float(i), data=None if i % 7 == 0 else os.urandom(i % 300))
        for i in range(1500)
    ]
    stripped, parcel = handoff.pack(events, tmp_path)
    assert parcel.path is not None and Path(parcel.path).parent == tmp_path
    assert all(e.data is None for e in stripped)
    assert [e.event_id for e in stripped] == [e.event_id for e in events]
    assert Path(parcel.path).stat().st_size == sum(len(e.data or b"") for e in events)
    assert handoff.unpack(stripped, parcel) == events
    assert list(tmp_path.iterdir()) == []  # the child removed it as it read it
    handoff.discard(parcel)  # and the worker's own removal after that is harmless


def test_where_the_file_cannot_be_written_the_bytes_stay_in_the_events(tmp_path: Path) -> None:
    events = [ScanEvent("a", 0.0, data=b"DICM")]
    stripped, parcel = handoff.pack(events, tmp_path / "missing")
    assert stripped == events and parcel.path is None
    assert handoff.unpack(stripped, parcel) == events


def test_a_parcel_cut_short_is_an_error_not_an_event_with_part_of_its_bytes(
    tmp_path: Path,
) -> None:
    stripped, parcel = handoff.pack([ScanEvent("a", 0.0, data=b"0123456789")], tmp_path)
    assert parcel.path is not None
    os.truncate(parcel.path, 4)
    with pytest.raises(OSError, match="ended before event a's bytes"):
        handoff.unpack(stripped, parcel)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("values", [[b""], [b"DICM", b""], [b"", b"", b"x"]], ids=repr)
def test_empty_values_cross_too(tmp_path: Path, values: list[bytes]) -> None:
    # An empty record value (a hostile record: not_dicom) once sent writev round for ever.
    events = [ScanEvent(f"e{i}", 0.0, data=v) for i, v in enumerate(values)]
    stripped, parcel = handoff.pack(events, tmp_path)
    assert parcel.path is not None
    assert handoff.unpack(stripped, parcel) == events


def test_no_events_with_bytes_no_file(tmp_path: Path) -> None:
    events = [ScanEvent("r", 0.0, uri="file:///x.dcm")]
    assert handoff.pack(events, tmp_path) == (events, handoff.Parcel(None, (None,)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not handoff.SHARED_MEMORY.is_dir(), reason="no /dev/shm here")
@pytest.mark.timeout(180)
def test_the_compute_process_gets_chunks_through_shared_memory_and_leaves_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    packed: list[handoff.Parcel] = []
    real_pack = handoff.pack

    def pack(events: list[ScanEvent]) -> tuple[list[ScanEvent], handoff.Parcel]:
        stripped, parcel = real_pack(events)
        packed.append(parcel)
        return stripped, parcel

    monkeypatch.setattr(handoff, "pack", pack)
    good, text, cut = _events()
    with ProcessPipeline(Settings(event_timeout_s=1.0), target=die_on_cue) as child:
        assert [o.reason for o in child.process([good, text, cut])] == [
            None,
            "not_dicom",
            "truncated",
        ]
        assert packed and all(p.path is not None for p in packed)
        assert _left() == []
        # A child that dies, or hangs and is killed, before or after reading its parcel.
        outcomes = child.process([good, ScanEvent("d", 0.0, data=DIE)])
        assert [o.reason for o in outcomes] == [None, "internal_error"]
        assert child.process([ScanEvent("h", 0.0, data=HANG)])[0].reason == "timeout"
    assert _left() == []


def test_a_start_sweeps_parcels_of_dead_workers_and_keeps_those_of_live_ones(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid in (live.pid, dead.pid):
            (tmp_path / f"{handoff.PREFIX}{pid}-{'a' * 32}").write_bytes(b"DICM")
        (tmp_path / "other-file").write_bytes(b"not ours")
        assert handoff.sweep(tmp_path) == 1
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == ["other-file", f"{handoff.PREFIX}{live.pid}-{'a' * 32}"]
    finally:
        live.kill()
        live.wait()
