"""The membership watchdog: a consumer without partitions and not stable for too long is
replaced by a fresh one (which joins afresh); an idle but stable member is left alone."""

from __future__ import annotations

from typing import Any

from kafka import OffsetAndMetadata

from tests.unit.runtime.fakes import FakeConsumer, FakeProducer, Record
from tests.unit.runtime.test_loop import models, record
from worker.inference import ModelSet
from worker.metrics import Health, Metrics
from worker.phantoms import ct_slice, encode_ct
from worker.runtime.loop import Worker
from worker.runtime.membership import MembershipWatchdog, guard_join
from worker.settings import Settings

__all__ = ["models"]


class _Coordinator:
    def __init__(self, state: str) -> None:
        self.state = state


def member(state: str | None, owned: bool = False) -> Any:
    consumer: Any = FakeConsumer([], [])
    if state is not None:
        consumer._coordinator = _Coordinator(state)  # type: ignore[attr-defined]
    if not owned:
        consumer.owned = set()
    return consumer


class _Joining:
    """kafka-python 3.0's coordinator as the guard sees it: a join task, and its own answer."""

    def __init__(self, answer: bool) -> None:
        self._join_task: object | None = None
        self.answer = answer
        self.asked = 0

    def need_rejoin(self) -> bool:
        self.asked += 1
        return self.answer


def test_the_join_guard_waits_for_a_join_task_the_client_would_forget() -> None:
    coordinator = _Joining(answer=False)  # the leader's assignment made the client say False
    consumer: Any = type("Consumer", (), {"_coordinator": coordinator})()
    assert guard_join(consumer) is consumer
    assert consumer._coordinator.need_rejoin() is False  # no join at all: the client's answer
    coordinator._join_task = object()  # pending, or finished and not yet applied
    assert consumer._coordinator.need_rejoin() is True
    coordinator._join_task = None  # applied: the client's answer again
    coordinator.answer = True
    assert consumer._coordinator.need_rejoin() is True
    assert coordinator.asked == 2


def test_a_client_without_a_join_task_is_left_as_it_is(caplog: Any) -> None:
    class Other:
        def need_rejoin(self) -> bool:
            return False

    coordinator = Other()
    consumer: Any = type("Consumer", (), {"_coordinator": coordinator})()
    original = coordinator.need_rejoin
    guard_join(consumer)
    assert consumer._coordinator.need_rejoin == original
    assert "membership watchdog" in caplog.text


def test_a_join_that_never_ends_is_stuck_after_the_wait() -> None:
    now = [0.0]
    dog = MembershipWatchdog("scans.events", 45.0, clock=lambda: now[0])
    assigned = member("<rebalancing>", owned=True)
    assert not dog.stuck(assigned)
    now[0] += 100.0
    assert not dog.stuck(assigned)  # it has partitions: nothing to fix
    stuck = member("<rebalancing>")
    assert not dog.stuck(stuck)  # the clock starts now
    now[0] += 44.0
    assert not dog.stuck(stuck)
    now[0] += 1.0
    assert dog.stuck(stuck) and dog.waited_s() == 45.0


def test_an_assigned_member_whose_fetches_never_answer_is_stuck() -> None:
    now = [0.0]
    dog = MembershipWatchdog("scans.events", 45.0, clock=lambda: now[0])
    deaf: Any = FakeConsumer([], [])
    deaf.highwater = lambda tp: None  # partitions, and never a fetch answer
    assert not dog.stuck(deaf)
    now[0] += 46.0
    assert dog.stuck(deaf)
    dog.reset()
    healthy: Any = FakeConsumer([], [])  # idle, but its fetches answer: it knows the watermark
    assert not dog.stuck(healthy)
    now[0] += 46.0
    assert not dog.stuck(healthy)
    now[0] += 46.0
    assert not dog.stuck(healthy)


def test_an_assigned_member_that_leaves_waiting_records_unfetched_is_stuck() -> None:
    """It knows the watermark (its fetches once answered) but fetches nothing more: records
    that were there a window ago, beyond its position, are still there a window later."""
    now = [0.0]
    dog = MembershipWatchdog("scans.events", 45.0, clock=lambda: now[0])
    deaf: Any = FakeConsumer([], [[record(0, b"x"), record(1, b"y")]])  # 2 records, position 0
    assert not dog.stuck(deaf)
    now[0] += 46.0
    assert not dog.stuck(deaf)  # records wait: noted, judged a window later
    now[0] += 46.0
    assert dog.stuck(deaf)


def test_records_that_just_arrived_or_were_fetched_meanwhile_are_no_verdict() -> None:
    now = [0.0]
    dog = MembershipWatchdog("scans.events", 45.0, clock=lambda: now[0])
    idle: Any = FakeConsumer([], [])  # nothing on the partition yet
    assert not dog.stuck(idle)
    now[0] += 46.0
    assert not dog.stuck(idle)
    idle._end = 5  # records arrive just as the window ends
    now[0] += 46.0
    assert not dog.stuck(idle)  # never judged on records that just came
    idle._position = 5  # and the member fetches them, as a healthy one does
    now[0] += 46.0
    assert not dog.stuck(idle)
    idle._end = 9  # more come, and this time they stay unfetched for a whole window
    now[0] += 46.0
    assert not dog.stuck(idle)
    now[0] += 46.0
    assert dog.stuck(idle)


def test_a_stable_member_without_partitions_is_stuck_only_if_records_wait_unworked() -> None:
    now = [0.0]
    dog = MembershipWatchdog("scans.events", 45.0, clock=lambda: now[0])
    idle: Any = FakeConsumer([], [[Record("scans.events", 0, 0, 0, None, b"x")]])
    idle.owned = set()
    idle._coordinator = _Coordinator("<stable>")
    assert not dog.stuck(idle)
    now[0] += 46.0
    assert dog.stuck(idle)  # one record waits, nobody committed it in 46 s
    dog.reset()
    assert not dog.stuck(idle)
    idle.committed_offsets[idle.tp] = OffsetAndMetadata(1, "", -1)  # another member works
    now[0] += 46.0
    assert not dog.stuck(idle)
    now[0] += 46.0
    assert not dog.stuck(idle)  # and now nothing waits at all: idle, not stuck


def test_the_worker_replaces_a_stuck_consumer_and_goes_on(models: ModelSet) -> None:
    log: list[str] = []
    good = encode_ct(ct_slice(21, 64))
    stuck = FakeConsumer(log, [[record(0, good)]])
    stuck.owned = set()  # joined, never assigned
    stuck._coordinator = _Coordinator("<rebalancing>")  # type: ignore[attr-defined]
    fresh = FakeConsumer(log, [[record(0, good)]])
    made = iter([stuck, fresh])
    worker = Worker(
        Settings(compute_process=False),  # the loop in one process: fakes cannot cross
        "fake:9092",
        models,
        Metrics(),
        Health(),
        producer=FakeProducer(log),
        consumer_factory=lambda: next(made),
    )
    assert worker._watchdog is not None
    worker._watchdog.stuck_after_s = 0.0  # instead of waiting 45 s
    stats = worker.run(drain=True)
    assert worker.consumer is fresh and worker.flow.consumer is fresh
    assert worker.delivery.consumer is fresh
    assert log.count("subscribe") == 2 and stats.findings == 1
    assert fresh.committed_offsets[fresh.tp].offset == 1


def test_a_consumer_given_by_the_caller_is_never_replaced(models: ModelSet) -> None:
    consumer: Any = FakeConsumer([], [[Record("scans.events", 0, 0, 0, None, b"x")]])
    worker = Worker(
        Settings(compute_process=False),  # the loop in one process: fakes cannot cross
        "fake:9092",
        models,
        Metrics(),
        Health(),
        consumer=consumer,
        producer=FakeProducer([]),
        consumer_factory=lambda: FakeConsumer([], []),
    )
    assert worker._watchdog is None
