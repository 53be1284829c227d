"""The in-memory fake keeps the SQL store's rules that the agent's unit tests rely on."""

from __future__ import annotations

import pytest

from lease import EventKind, LeaseState, Switchover
from lease.memory import MemoryLeaseStore
from lease.model import MAX_LOOKBACK_MS, detail_by
from tests.support.control_scenarios import CONTROL_CASES, SCENARIOS, Case, Scenario, check


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_missing_row_reads_as_missing_and_is_created_by_an_acquire() -> None:
    store = MemoryLeaseStore(Clock())
    state = await store.read("c")
    assert not state.row_exists and state.epoch == 0
    assert (await store.try_acquire("c", "m1", 1000, expected=state)).acquired
    assert (await store.read("c")).row_exists


async def test_only_the_same_instance_resumes_an_unexpired_lease() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    await store.try_acquire("c", "m1", 1000, instance="a")
    assert not (await store.try_acquire("c", "m1", 1000, instance="b")).acquired
    assert not (await store.try_acquire("c", "m1", 1000)).acquired
    again = await store.try_acquire("c", "m1", 1000, instance="a")
    assert again.acquired and again.epoch == 2 and store.events[-1].kind == EventKind.RESUMED
    clock.now += 2
    taken = await store.try_acquire("c", "m1", 1000, instance="b")
    assert taken.acquired and (await store.read("c")).holder_instance == "b"
    assert store.events[-1].kind == EventKind.TAKEOVER


async def test_release_clears_the_instance_and_node_rows_keep_it() -> None:
    store = MemoryLeaseStore(Clock())
    got = await store.try_acquire("c", "m1", 1000, instance="a")
    assert await store.release("c", "m1", got.epoch)
    assert (await store.read("c")).holder_instance is None
    await store.record_node("c", "m1", "standby", None, None, None, instance="a")
    assert (await store.list_nodes("c"))[0].instance == "a"


async def test_a_stale_expected_epoch_loses() -> None:
    store = MemoryLeaseStore(Clock())
    await store.try_acquire("c", "m1", 1000)
    assert not (await store.try_acquire("c", "m2", 1000, expected=LeaseState("c", None, 0, -1))).acquired


# ---- schema v3: the control state -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_the_acquire_rule_matches_the_sql_scenarios(scenario: Scenario) -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    names = iter(range(1000))

    async def expire(cluster: str) -> None:
        clock.now += 100

    await check(scenario, store, lambda: f"c{next(names)}", expire)


@pytest.mark.parametrize("case", CONTROL_CASES, ids=lambda c: c.__name__)
async def test_the_control_operations_keep_the_shared_rules(case: Case) -> None:
    clock = Clock()

    async def expire(cluster: str) -> None:
        clock.now += 100

    await case(MemoryLeaseStore(clock), "c", expire)


async def test_a_switchover_request_is_refused_while_one_is_pending_or_in_maintenance_or_disabled() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    await store.try_acquire("c", "m1", 60_000, instance="a")
    assert await store.request_switchover("c", "m2", 5000, "op@h")
    state = await store.read("c")
    assert state.control.switchover == Switchover("m2", 5000, "op@h", 0, id=1)
    assert not state.control.switchover.due
    assert not await store.request_switchover("c", "m3", 0, "op2@h")
    clock.now += 6
    assert (await store.read("c")).control.switchover == Switchover("m2", -1000, "op@h", 6000, id=1)
    assert await store.cancel_switchover("c", "op@h")
    assert not await store.cancel_switchover("c", "op@h")
    assert await store.set_maintenance("c", True, "op@h")
    assert not await store.request_switchover("c", "m2", 0, "op@h")
    assert await store.set_maintenance("c", False, "op@h")
    assert await store.set_disabled("c", True, "op@h")
    assert not await store.request_switchover("c", "m2", 0, "op@h")
    kinds = [e.kind for e in store.events[1:]]
    assert kinds == [
        EventKind.SWITCHOVER_REQUESTED,
        EventKind.SWITCHOVER_CANCELLED,
        EventKind.MAINTENANCE_ON,
        EventKind.MAINTENANCE_OFF,
        EventKind.DISABLED,
    ]
    assert detail_by(store.events[1].detail) == "op@h" and detail_by(store.events[2].detail) == "op@h"


async def test_a_handover_reserves_the_lease_for_the_target_and_clears_the_request() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    got = await store.try_acquire("c", "m1", 3000, instance="a")
    assert await store.request_switchover("c", "m2", 0, "op@h")
    assert not await store.handover("c", "m1", got.epoch + 1, "m2", 3000)  # not our epoch
    assert await store.handover("c", "m1", got.epoch, "m2", 3000)
    state = await store.read("c")
    assert state.holder is None and state.reserved_for == "m2" and state.control.switchover is None
    assert not state.held and state.epoch == got.epoch
    assert not await store.handover("c", "m1", got.epoch, "m2", 3000)  # no longer ours
    clock.now += 3
    assert (await store.read("c")).reserved_for is None


async def test_a_holder_cannot_hand_over_an_expired_lease() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    got = await store.try_acquire("c", "m1", 1000)
    clock.now += 2
    assert not await store.handover("c", "m1", got.epoch, "m2", 3000)
    assert await store.release("c", "m1", got.epoch)  # it can still release it


async def test_maintenance_and_disable_report_whether_they_changed_something() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    await store.try_acquire("c", "m1", 60_000, instance="a")
    assert await store.set_maintenance("c", True, "a@h")
    assert not await store.set_maintenance("c", True, "b@h")
    clock.now += 2
    control = (await store.read("c")).control
    assert (control.maintenance_ms, control.maintenance_by, control.sees()) == (2000, "a@h", "maintenance")
    assert await store.set_disabled("c", True, "a@h")
    assert not await store.set_disabled("c", True, "a@h")
    assert (await store.read("c")).control.sees() == "disabled,maintenance"
    assert await store.set_disabled("c", False, "a@h")
    assert not await store.set_disabled("c", False, "a@h")


async def test_enable_clears_failover_off_and_failover_off_trips_once() -> None:
    store = MemoryLeaseStore(Clock())
    assert not await store.set_failover_off("c", "m2", "no lease row yet")  # as the SQL statement: no row
    assert (await store.read("c")).row_exists is False
    await store.try_acquire("c", "m2", 3000)
    assert await store.set_failover_off("c", "m2", "4 take-overs within 3600 s")
    assert not await store.set_failover_off("c", "m2", "again")
    control = (await store.read("c")).control
    assert control.failover_off and control.failover_off_reason == "4 take-overs within 3600 s"
    assert store.events[-1].kind == EventKind.FLAPPING and store.events[-1].node == "m2"
    assert await store.set_disabled("c", False, "op@h")  # `fos enable`
    assert not (await store.read("c")).control.failover_off


async def test_events_are_counted_and_listed_within_a_window_of_the_clock() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    await store.record_event("c", "m1", EventKind.TAKEOVER, 1, None)
    clock.now += 10
    await store.record_event("c", "m2", EventKind.TAKEOVER, 2, None)
    await store.record_event("c", "m2", EventKind.PROMOTED, 2, None)
    await store.record_event("other", "m2", EventKind.TAKEOVER, 2, None)
    assert await store.count_events("c", [EventKind.TAKEOVER], 60_000) == 2
    assert await store.count_events("c", [EventKind.TAKEOVER], 5_000) == 1
    assert await store.count_events("c", [EventKind.TAKEOVER, EventKind.PROMOTED], 5_000) == 2
    assert [e.kind for e in await store.list_events("c", since_ms=5_000)] == ["promoted", "takeover"]
    assert len(await store.list_events("c")) == 3


async def test_node_rows_carry_what_the_agent_sees_and_their_age() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    await store.record_node("c", "m1", "standby", None, None, None, sees="maintenance")
    clock.now += 1.5
    (row,) = await store.list_nodes("c")
    assert row.sees == "maintenance" and row.last_seen_age_s == 1.5


async def test_maintenance_cannot_start_during_a_switchover_and_failover_off_refuses_one() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    got = await store.try_acquire("c", "m1", 3000, instance="a")
    assert await store.request_switchover("c", "m2", 0, "op@h")
    assert not await store.set_maintenance("c", True, "op@h")
    assert await store.handover("c", "m1", got.epoch, "m2", 300)
    assert not await store.set_maintenance("c", True, "op@h")
    clock.now += 1
    assert not await store.set_maintenance("c", True, "op@h")  # the reservation is over: free, nobody serves
    assert (await store.try_acquire("c", "m2", 3000, instance="b")).acquired
    assert await store.set_maintenance("c", True, "op@h")
    assert await store.set_maintenance("c", False, "op@h")
    assert await store.set_failover_off("c", "m1", "flapping")
    assert not await store.request_switchover("c", "m2", 0, "op@h")


async def test_a_due_time_at_clock_zero_is_a_due_time() -> None:
    clock = Clock()
    clock.now = 1.0
    store = MemoryLeaseStore(clock)
    await store.try_acquire("c", "m1", 60_000)
    assert await store.request_switchover("c", "m2", -1000, "op@h")  # due at clock 0.0: one second overdue
    clock.now = 11.0
    pending = (await store.read("c")).control.switchover
    assert pending is not None and pending.due_in_ms == -11_000


@pytest.mark.parametrize("due_in_ms", [2**31, -(2**31), 10**13])
async def test_a_due_time_the_sql_store_refuses_is_refused(due_in_ms: int) -> None:
    store = MemoryLeaseStore(Clock())
    with pytest.raises(ValueError, match="due_in_ms must be an integer from"):
        await store.request_switchover("c", "m2", due_in_ms, "op@h")
    assert (await store.read("c")).control.switchover is None


async def test_look_backs_beyond_ten_years_are_refused_as_by_the_sql_store() -> None:
    store = MemoryLeaseStore(Clock())
    assert await store.list_events("c", since_ms=MAX_LOOKBACK_MS) == []
    with pytest.raises(ValueError, match="at most 10 years"):
        await store.list_events("c", since_ms=MAX_LOOKBACK_MS + 1)
    with pytest.raises(ValueError, match="at most 10 years"):
        await store.count_events("c", ["takeover"], MAX_LOOKBACK_MS + 1)
