"""The ControlStore on PostgreSQL, MariaDB and SQLite (and MS SQL when configured) through their real ODBC
drivers: the schema-3 acquire rule (the same scenarios as the in-memory fake), switchover requests, the handover
reservation, maintenance, disable/enable, anti-flap, and the history reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from lease import EventKind, SqlLeaseStore, Switchover
from lease.model import MAX_LOOKBACK_MS, detail_by
from tests.conftest import unique
from tests.support.control_scenarios import CONTROL_CASES, SCENARIOS, Case, Scenario, check


async def _until(probe: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {deadline_s}s")


def _expire(store: SqlLeaseStore) -> Callable[[str], Awaitable[None]]:
    async def expire(cluster: str) -> None:
        async def over() -> bool:
            remaining = (await store.read(cluster)).remaining_ms
            return remaining is None or remaining <= 0

        await _until(over, f"the lease (or reservation) of {cluster} to run out")

    return expire


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_the_acquire_compare_and_set_follows_the_control_state(store: SqlLeaseStore, scenario: Scenario) -> None:
    await check(scenario, store, lambda: unique("acq"), _expire(store))


@pytest.mark.parametrize("case", CONTROL_CASES, ids=lambda c: c.__name__)
async def test_the_control_operations_keep_the_shared_rules(store: SqlLeaseStore, case: Case) -> None:
    await case(store, unique("ho"), _expire(store))


async def test_a_switchover_request_is_stored_on_the_database_clock_and_only_one_at_a_time(
    store: SqlLeaseStore,
) -> None:
    c = unique("sw")
    assert await store.request_switchover(c, "m2", 60_000, "alice@db1")  # creates the missing row
    pending = (await store.read(c)).control.switchover
    assert pending is not None and (pending.to, pending.by) == ("m2", "alice@db1")
    assert 55_000 < pending.due_in_ms <= 60_000 and 0 <= pending.requested_age_ms < 5_000 and not pending.due
    assert not await store.request_switchover(c, "m3", 0, "bob@db2")  # another one pending
    assert (await store.read(c)).control.switchover == pending or (await store.read(c)).control.switchover.to == "m2"
    assert await store.cancel_switchover(c, "bob@db2")
    assert (await store.read(c)).control.switchover is None
    assert not await store.cancel_switchover(c, "bob@db2")
    assert await store.request_switchover(c, "m3", 0, "bob@db2")
    now = (await store.read(c)).control.switchover
    assert now is not None and now.due and now.to == "m3"
    events = await store.list_events(c)
    assert [e.kind for e in events] == ["switchover_requested", "switchover_cancelled", "switchover_requested"]
    assert [detail_by(e.detail) for e in events] == ["bob@db2", "bob@db2", "alice@db1"]
    assert events[1].detail == "switchover to m2, by bob@db2"


async def test_the_holder_drops_a_stale_request_with_its_own_kind_and_reason(store: SqlLeaseStore) -> None:
    c = unique("sw")
    assert await store.request_switchover(c, "m2", -5000, "alice@db1")  # overdue, as a stopped holder finds it
    pending = (await store.read(c)).control.switchover
    assert pending is not None and pending.due and -6000 < pending.due_in_ms <= -5000
    reason = "due 5.2 s ago, more than two heartbeats"
    assert await store.cancel_switchover(c, "m1", kind=EventKind.SWITCHOVER_STALE, detail=reason)
    (event, _) = await store.list_events(c)
    assert (event.kind, event.detail) == ("switchover_stale", f"{reason}, by m1")


async def test_a_switchover_is_refused_in_maintenance_and_when_disabled(store: SqlLeaseStore) -> None:
    c = unique("sw")
    assert (await store.try_acquire(c, "m1", 30_000, instance="i1")).acquired
    assert await store.set_maintenance(c, True, "op@h")
    assert not await store.request_switchover(c, "m2", 0, "op@h")
    assert await store.set_maintenance(c, False, "op@h")
    assert await store.set_disabled(c, True, "op@h")
    assert not await store.request_switchover(c, "m2", 0, "op@h")
    assert await store.set_disabled(c, False, "op@h")
    assert await store.request_switchover(c, "m2", 0, "op@h")


async def test_a_handover_releases_to_the_target_and_clears_the_request(store: SqlLeaseStore) -> None:
    c = unique("ho")
    got = await store.try_acquire(c, "m1", 30_000, instance="i1")
    assert await store.request_switchover(c, "m2", 0, "op@h")
    assert not await store.handover(c, "m1", got.epoch + 1, "m2", 30_000)  # not our epoch
    assert not await store.handover(c, "m2", got.epoch, "m2", 30_000)  # not our lease
    assert await store.handover(c, "m1", got.epoch, "m2", 30_000)
    state = await store.read(c)
    assert (state.holder, state.holder_instance, state.epoch) == (None, None, got.epoch)
    assert state.reserved_for == "m2" and 25_000 < (state.remaining_ms or 0) <= 30_000
    assert state.control.switchover is None
    assert not await store.handover(c, "m1", got.epoch, "m2", 30_000)  # gone
    taken = await store.try_acquire(c, "m2", 30_000, expected=state, instance="i2")
    assert taken.acquired and taken.epoch == got.epoch + 1
    kinds = [(e.kind, e.node, e.epoch) for e in await store.list_events(c, limit=3)]
    assert kinds == [
        ("acquired", "m2", got.epoch + 1),
        ("handover", "m1", got.epoch),
        ("switchover_requested", None, None),
    ]
    assert (await store.list_events(c, limit=1))[0].detail == "handed over to this node"
    row = await store.status_row(c)
    assert row is not None and row["handover_to"] is None and row["transitions"] == 3


async def test_an_expired_lease_cannot_be_handed_over_but_can_be_released(store: SqlLeaseStore) -> None:
    c = unique("ho")
    got = await store.try_acquire(c, "m1", 1, instance="i1")
    await _expire(store)(c)
    assert not await store.handover(c, "m1", got.epoch, "m2", 30_000)
    assert await store.release(c, "m1", got.epoch)


async def test_maintenance_disable_and_failover_off_report_whether_they_changed_anything(store: SqlLeaseStore) -> None:
    c = unique("ctl")
    assert (await store.try_acquire(c, "m1", 30_000, instance="i1")).acquired
    assert await store.set_maintenance(c, True, "alice@db1")
    assert not await store.set_maintenance(c, True, "bob@db2")
    assert await store.set_failover_off(c, "m2", "4 take-overs within 3600 s")
    assert not await store.set_failover_off(c, "m2", "again")
    assert await store.set_disabled(c, True, "bob@db2")
    assert not await store.set_disabled(c, True, "bob@db2")
    control = (await store.read(c)).control
    assert (control.maintenance_by, control.disabled_by) == ("alice@db1", "bob@db2")
    assert control.failover_off_reason == "4 take-overs within 3600 s"
    assert 0 <= (control.maintenance_ms or -1) < 5000 and control.sees() == "disabled,maintenance,failover_off"
    row = await store.status_row(c)
    assert row is not None and row["maintenance_by"] == "alice@db1" and 0 <= row["maintenance_for_s"] < 5
    assert 0 <= row["disabled_for_s"] < 5 and 0 <= row["failover_off_for_s"] < 5
    assert row["maintenance_since"] is not None and row["maintenance_since"].tzinfo is not None
    assert await store.set_disabled(c, False, "carol@db1")  # enable: clears disabled and failover off
    control = (await store.read(c)).control
    assert not control.disabled and not control.failover_off and control.maintenance
    assert not await store.set_disabled(c, False, "carol@db1")
    assert await store.set_maintenance(c, False, "alice@db1")
    assert (await store.read(c)).control.sees() == ""
    kinds = [e.kind for e in reversed(await store.list_events(c))]
    assert kinds[1:] == ["maintenance_on", "flapping", "disabled", "enabled", "maintenance_off"]


async def test_long_operator_text_is_cut_to_its_column(store: SqlLeaseStore) -> None:
    c = unique("ctl")
    assert (await store.try_acquire(c, "m1", 30_000, instance="i1")).acquired
    assert await store.set_maintenance(c, True, "u" * 300 + "@host")
    assert await store.set_failover_off(c, "m1", "r" * 500)
    control = (await store.read(c)).control
    assert control.maintenance_by == "u" * 200 and control.failover_off_reason == "r" * 400


async def test_events_are_counted_and_listed_within_a_look_back_on_the_database_clock(store: SqlLeaseStore) -> None:
    c = unique("ev")
    await store.record_event(c, "m1", EventKind.TAKEOVER, 1, None)
    await store.record_event(c, "m2", EventKind.TAKEOVER, 2, None)
    await store.record_event(c, "m2", EventKind.PROMOTED, 2, None)
    await store.record_event(unique("other"), "m2", EventKind.TAKEOVER, 2, None)
    assert await store.count_events(c, [EventKind.TAKEOVER], 60_000) == 2
    assert await store.count_events(c, [EventKind.TAKEOVER, EventKind.PROMOTED], 60_000) == 3
    assert await store.count_events(c, [], 60_000) == 0
    assert await store.count_events(c, [EventKind.TAKEOVER], 40 * 86_400_000) == 2  # beyond 32-bit milliseconds
    assert len(await store.list_events(c, since_ms=40 * 86_400_000)) == 3
    assert len(await store.list_events(c, since_ms=60_000, limit=2)) == 2

    async def aged_out() -> bool:
        return await store.count_events(c, [EventKind.TAKEOVER, EventKind.PROMOTED], 300) == 0

    await _until(aged_out, "the events to leave a 300 ms window")
    assert await store.list_events(c, since_ms=300) == []
    await store.record_event(c, "m1", EventKind.FLAPPING, None, "x")
    assert [e.kind for e in await store.list_events(c, since_ms=300)] == ["flapping"]


async def test_node_rows_carry_what_the_agent_sees(store: SqlLeaseStore) -> None:
    c = unique("node")
    await store.record_node(c, "m1", "standby", None, None, "0.3", instance="i1", sees="maintenance")
    await store.record_node(c, "m2", "standby", None, None, "0.3", instance="i2", sees="")
    await store.record_node(c, "m3", "standby", None, None, "0.2")
    assert [(n.node, n.sees) for n in await store.list_nodes(c)] == [("m1", "maintenance"), ("m2", ""), ("m3", None)]
    await store.record_node(c, "m1", "standby", None, None, "0.3", instance="i1", sees="")
    assert (await store.list_nodes(c))[0].sees == ""
    with pytest.raises(ValueError, match="longer than the column"):
        await store.record_node(c, "m1", "standby", None, None, "0.3", sees="x" * 65)


async def test_a_pending_switchover_reads_as_a_switchover(store: SqlLeaseStore) -> None:
    c = unique("sw")
    assert await store.request_switchover(c, "m2", 0, "failback")
    pending = (await store.read(c)).control.switchover
    assert isinstance(pending, Switchover) and pending.by == "failback" and pending.due_in_ms <= 0


async def test_maintenance_cannot_start_during_a_switchover_and_failover_off_refuses_one(store: SqlLeaseStore) -> None:
    # Either would keep the target out of the handed-over lease (the acquire gates), and nobody would serve.
    c = unique("race")
    got = await store.try_acquire(c, "m1", 30_000, instance="i1")
    assert await store.request_switchover(c, "m2", 0, "op@h")
    assert not await store.set_maintenance(c, True, "op@h")  # pending
    assert await store.handover(c, "m1", got.epoch, "m2", 300)
    assert not await store.set_maintenance(c, True, "op@h")  # the reservation runs
    await _expire(store)(c)
    assert not await store.set_maintenance(c, True, "op@h")  # the reservation is over: a free lease, nobody serves
    assert (await store.try_acquire(c, "m2", 30_000, instance="i2")).acquired
    assert await store.set_maintenance(c, True, "op@h")  # held
    assert await store.set_maintenance(c, False, "op@h")
    assert await store.set_failover_off(c, "m1", "flapping")
    assert not await store.request_switchover(c, "m2", 0, "op@h")
    assert [e.kind for e in await store.list_events(c, limit=5)] == [
        "flapping",
        "maintenance_off",
        "maintenance_on",
        "acquired",
        "handover",
    ]


@pytest.mark.parametrize(
    "by", ["jürgen@höst", "张伟@主机", "op😀@h", "é" * 199 + "😀"], ids=["latin1", "cjk", "emoji", "long"]
)
async def test_operators_names_and_reasons_in_any_script_round_trip(store: SqlLeaseStore, by: str) -> None:
    c = unique("text")
    got = await store.try_acquire(c, "m1", 30_000, instance="i1")
    assert await store.set_maintenance(c, True, by)
    assert await store.set_maintenance(c, False, by)
    assert await store.request_switchover(c, "m2", 60_000, by)
    assert await store.set_failover_off(c, "m1", f"flapping, seen by {by}")
    control = (await store.read(c)).control
    assert control.switchover is not None and control.switchover.by == by
    assert control.failover_off_reason == f"flapping, seen by {by}"[:400]
    assert await store.set_disabled(c, True, by)
    assert (await store.read(c)).control.disabled_by == by
    await store.record_node(c, "m1", "active", True, None, "0.3", instance="i1", sees="disabled")
    events = await store.list_events(c, limit=10)
    assert [detail_by(e.detail) for e in events if e.kind in ("maintenance_on", "disabled")] == [by, by]
    assert got.acquired


async def test_look_backs_beyond_ten_years_are_refused(store: SqlLeaseStore) -> None:
    c = unique("ev")
    await store.record_event(c, "m1", EventKind.TAKEOVER, 1, None)
    assert len(await store.list_events(c, since_ms=MAX_LOOKBACK_MS)) == 1
    assert await store.count_events(c, [EventKind.TAKEOVER], MAX_LOOKBACK_MS) == 1
    for huge in (MAX_LOOKBACK_MS + 1, 10**14):
        with pytest.raises(ValueError, match="at most 10 years"):
            await store.list_events(c, since_ms=huge)
        with pytest.raises(ValueError, match="at most 10 years"):
            await store.count_events(c, [EventKind.TAKEOVER], huge)
