"""The agent's reactions to the control state (agent/operations.py, agent/failback.py and their hooks in the
runner), on the in-memory store, a fake binder and a fake application: switchover, maintenance, disable,
fail-back, anti-flap. The same behaviours on real agents: tests/test_agent_operations_netns.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.control_rules import HolderAction, HolderPlan
from agent.failback import MAX_ATTEMPTS, RETRY_AFTER_DELAYS
from agent.roles import Role
from lease import EventKind
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until


@pytest.fixture
async def store() -> AsyncIterator[MemoryLeaseStore]:
    yield MemoryLeaseStore(clock=boottime)


def kinds(store: MemoryLeaseStore) -> list[str]:
    return [e.kind for e in store.events]


def detail_of(store: MemoryLeaseStore, kind: EventKind) -> str:
    return next(e.detail or "" for e in store.events if e.kind == kind)


async def pair(store: MemoryLeaseStore, **kwargs: Any) -> tuple[Node, Node]:
    cfg = config(**kwargs)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.STANDBY and ("c1", "m2") in store.nodes, what="m2 standby")
    return m1, m2


async def test_a_switchover_hands_the_lease_to_the_target_at_once_and_the_ip_moves_in_order(
    store: MemoryLeaseStore,
) -> None:
    m1, m2 = await pair(store, ttl=3, heartbeat=0.5)
    asked = time.monotonic()
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    took = await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    # Seen within half a heartbeat, handed over (not expired: the ttl is 3 s), promoted without waiting.
    assert took < 0.5 + 0.5, f"switchover took {took:.2f}s"
    let_go = min(t for t in m1.binder.times("unbind") if t > asked)
    assert let_go - asked < 0.25 + 0.15, "m1 saw the request within half a heartbeat"
    assert m1.agent.role is Role.STANDBY and not m1.binder.bound and m2.binder.bound
    assert let_go < m2.binder.times("bind")[0], "the IP left m1 before m2 bound it"
    assert m1.app.stopped_at[-1] < m2.app.started_at[0], "m1's app stopped before m2's started"
    await until(lambda: EventKind.SWITCHOVER_DONE in kinds(store), 2, "SWITCHOVER_DONE")
    assert kinds(store).index(EventKind.HANDOVER) < kinds(store).index(EventKind.SWITCHOVER_DONE)
    assert "m2 serves" in detail_of(store, EventKind.SWITCHOVER_DONE)
    assert (await store.read("c1")).control.switchover is None
    assert store.rows["c1"].epoch == 2
    # And back: the old holder is a ready standby again.
    await until(lambda: store.nodes[("c1", "m1")].role == "standby", 2, "m1's row standby")
    assert await store.request_switchover("c1", "m1", 0, "op@host")
    await until(lambda: m1.agent.role is Role.ACTIVE and m2.agent.role is Role.STANDBY, 3, "m1 active again")
    await m1.kill()
    await m2.kill()


async def test_a_switchover_to_a_node_that_is_not_running_is_refused_and_the_holder_keeps_serving(
    store: MemoryLeaseStore,
) -> None:
    m1 = Node(config(), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: EventKind.SWITCHOVER_FAILED in kinds(store), 2, "SWITCHOVER_FAILED")
    assert "m2 has never reported" in detail_of(store, EventKind.SWITCHOVER_FAILED)
    assert (await store.read("c1")).control.switchover is None
    assert m1.agent.role is Role.ACTIVE and m1.binder.bound and not m1.app.stopped_at
    await m1.kill()


async def test_a_target_that_dies_after_the_handover_leaves_the_cluster_without_a_holder_for_a_ttl_at_most(
    store: MemoryLeaseStore,
) -> None:
    m1, m2 = await pair(store, ttl=0.6, heartbeat=0.15)
    handover = store.handover

    async def handover_then_target_dies(*args: Any, **kwargs: Any) -> bool:
        assert m2.task is not None
        m2.task.cancel()  # the target is gone before it can take the reserved lease
        return await handover(*args, **kwargs)

    store.handover = handover_then_target_dies  # type: ignore[method-assign]
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: EventKind.HANDOVER in kinds(store), 2, "the handover")
    handed = time.monotonic()
    gap = await until(lambda: m1.agent.role is Role.ACTIVE, 3, "m1 serving again")
    assert gap < 0.6 + 0.5, f"nobody served for {gap:.2f}s after the handover"
    assert store.rows["c1"].holder == "m1"
    await until(lambda: EventKind.SWITCHOVER_FAILED in kinds(store), 2, "SWITCHOVER_FAILED")
    assert "did not take the handed-over lease" in detail_of(store, EventKind.SWITCHOVER_FAILED)
    assert time.monotonic() - handed > 0.5, "m1 waited for the reservation to end"
    await m1.kill()


async def test_a_switchover_found_long_after_its_time_is_dropped_as_stale(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store)
    assert await store.request_switchover("c1", "m2", -1000, "op@host")  # 1 s ago: more than 2 heartbeats of 0.15
    await until(lambda: EventKind.SWITCHOVER_STALE in kinds(store), 2, "SWITCHOVER_STALE")
    assert (await store.read("c1")).control.switchover is None
    await asyncio.sleep(0.3)
    assert m1.agent.role is Role.ACTIVE and m2.agent.role is Role.STANDBY
    await m1.kill()
    await m2.kill()


async def test_a_switchover_requested_during_a_slow_promotion_is_done_once_active_not_dropped(
    store: MemoryLeaseStore,
) -> None:
    cfg = config()
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.ACTIVE)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.STANDBY and ("c1", "m1") in store.nodes)
    start = m1.app.start

    async def slow_start(env: dict[str, str]) -> None:
        await asyncio.sleep(1.2)  # eight heartbeats
        await start(env)

    m1.app.start = slow_start  # type: ignore[method-assign]
    m2.app.crash()  # m2 steps down; m1 takes over and promotes slowly
    await until(lambda: m1.agent.role is Role.PROMOTING, 3, "m1 promoting")
    await until(lambda: store.nodes[("c1", "m2")].role == "standby", 3, "m2 ready again")
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: m2.agent.role is Role.ACTIVE, 5, "the switchover done after the promotion")
    assert EventKind.SWITCHOVER_STALE not in kinds(store) and EventKind.HANDOVER in kinds(store)
    await m1.kill()
    await m2.kill()


async def test_a_scheduled_switchover_happens_at_its_time_not_a_heartbeat_later(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store, ttl=3, heartbeat=0.5)
    assert await store.request_switchover("c1", "m2", 700, "op@host")
    asked = time.monotonic()
    await until(lambda: any(t > asked for t in m1.binder.times("unbind")), 3, "m1 lets go")
    let_go = min(t for t in m1.binder.times("unbind") if t > asked) - asked
    assert 0.69 <= let_go < 0.7 + 0.25, f"let go {let_go:.2f}s after a request due in 0.7s"
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    await m1.kill()
    await m2.kill()


async def test_maintenance_keeps_the_holder_through_an_app_failure_and_off_restarts_it(
    store: MemoryLeaseStore,
) -> None:
    m1, m2 = await pair(store)
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: store.nodes[("c1", "m1")].sees == "maintenance", 2, "m1 acknowledged maintenance")
    await until(lambda: store.nodes[("c1", "m2")].sees == "maintenance", 2, "m2 acknowledged maintenance")
    m1.app.crash()
    await asyncio.sleep(0.6)  # several health intervals, renewals and the ttl
    assert m1.agent.role is Role.ACTIVE and m1.binder.bound and store.rows["c1"].holder == "m1"
    assert m2.agent.role is Role.STANDBY and len(m1.app.started_at) == 1 and not m1.app.stopped_at
    assert await store.set_maintenance("c1", False, "op@host")
    await until(lambda: len(m1.app.started_at) == 2, 2, "the app started again after maintenance")
    await until(lambda: m1.agent.role is Role.ACTIVE, 2)
    assert store.rows["c1"].epoch == 1 and m2.agent.role is Role.STANDBY  # reconciled in place, no failover
    await m1.kill()
    await m2.kill()


async def test_a_stop_during_maintenance_leaves_the_app_and_the_ip_and_keeps_the_lease(
    store: MemoryLeaseStore,
) -> None:
    m1, m2 = await pair(store)
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    m1.agent.request_stop("SIGTERM")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 2)
    assert m1.app.detached and m1.app.running() and not m1.app.stopped_at
    assert m1.binder.bound and not m1.binder.times("unbind")  # it lapses by its kernel lifetime unless resumed
    assert store.rows["c1"].holder == "m1" and EventKind.RELEASED not in kinds(store)
    # The same agent process (instance) started again resumes the lease without a failover.
    again = Node(config(), "m1", store, binder=m1.binder).start()
    again.app = m1.app
    await until(lambda: again.agent.role is Role.ACTIVE, 2, "resumed")
    assert store.rows["c1"].epoch == 2 and m2.agent.role is Role.STANDBY
    await again.kill()
    await m2.kill()


async def test_disable_lets_go_and_nobody_serves_until_enable(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store)
    assert await store.set_disabled("c1", True, "op@host")
    await until(lambda: m1.agent.role is Role.STANDBY, 2, "m1 let go")
    assert not m1.binder.bound and m1.app.stopped_at and store.rows["c1"].holder is None
    assert EventKind.DEMOTED in kinds(store) and EventKind.STEPPED_DOWN not in kinds(store)
    await until(lambda: all(store.nodes[("c1", n)].sees == "disabled" for n in ("m1", "m2")), 2, "both report it")
    calls = store.calls
    await asyncio.sleep(1.0)  # more than the ttl: nobody acquires, and nobody spins on the refusal
    assert m1.agent.role is Role.STANDBY and m2.agent.role is Role.STANDBY and store.rows["c1"].holder is None
    assert store.calls - calls < 60, f"{store.calls - calls} store calls in 1 s while disabled"
    assert await store.set_disabled("c1", False, "op@host")
    await until(lambda: Role.ACTIVE in (m1.agent.role, m2.agent.role), 2, "one serves")
    await asyncio.sleep(0.3)
    assert [m1.agent.role, m2.agent.role].count(Role.ACTIVE) == 1
    await m1.kill()
    await m2.kill()


async def test_a_standby_holding_off_reports_it_in_its_node_row(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store)
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 took over")
    await until(lambda: store.nodes[("c1", "m1")].role == "hold_off", 2, "m1 reports its hold-off")
    await until(lambda: store.nodes[("c1", "m1")].role == "standby", 2, "and standby once it is over")
    await m1.kill()
    await m2.kill()


async def test_auto_fail_back_to_the_preferred_node_after_the_delay_and_not_before(store: MemoryLeaseStore) -> None:
    cfg = config(cluster={"failback": "auto", "failback_delay": 0.8}, priorities=(10, 0))
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.ACTIVE, what="m2 active")
    m1 = Node(cfg, "m1", store).start()
    started = time.monotonic()
    await until(lambda: m1.agent.role is Role.ACTIVE, 4, "m1 took the role back")
    took = time.monotonic() - started
    assert took >= 0.8, f"failed back after {took:.2f}s, before the delay"
    assert m2.agent.role is Role.STANDBY
    assert any(e.kind == EventKind.SWITCHOVER_REQUESTED and "failback" in (e.detail or "") for e in store.events)
    await until(lambda: EventKind.SWITCHOVER_DONE in kinds(store), 2)
    await m1.kill()
    await m2.kill()


async def test_manual_fail_back_leaves_the_lower_priority_holder_in_place(store: MemoryLeaseStore) -> None:
    cfg = config(cluster={"failback_delay": 0.2}, priorities=(10, 0))
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.ACTIVE)
    m1 = Node(cfg, "m1", store).start()
    await asyncio.sleep(1.0)
    assert m2.agent.role is Role.ACTIVE and m1.agent.role is Role.STANDBY
    assert EventKind.SWITCHOVER_REQUESTED not in kinds(store)
    await m1.kill()
    await m2.kill()


async def test_too_many_take_overs_turn_failover_off_until_enable(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store, tables={"flap": {"max_takeovers": 1, "window": 60}})
    m1.app.crash()  # 1st: m2 takes over after m1's step-down
    await until(lambda: m2.agent.role is Role.ACTIVE, 3)
    await until(lambda: store.nodes[("c1", "m1")].role == "standby", 3, "m1's hold-off over")
    m2.app.crash()  # 2nd: more than max_takeovers
    await until(lambda: m1.agent.role is Role.ACTIVE, 3)
    await until(lambda: store.rows["c1"].failover_off_since is not None, 2, "failover off")
    assert EventKind.FLAPPING in kinds(store) and "2 take-overs" in detail_of(store, EventKind.FLAPPING)
    await until(lambda: store.nodes[("c1", "m2")].role == "standby", 3, "m2's hold-off over")
    # With failover off nobody else may take the lease: the holder restarts its app in place.
    starts = len(m1.app.started_at)
    m1.app.crash()
    await until(lambda: len(m1.app.started_at) == starts + 1, 3, "m1's app restarted in place")
    await asyncio.sleep(0.3)
    assert m1.agent.role is Role.ACTIVE and m2.agent.role is Role.STANDBY and store.rows["c1"].holder == "m1"
    assert await store.set_disabled("c1", False, "op@host")  # `fos enable` clears it
    assert store.rows["c1"].failover_off_since is None
    await until(lambda: not m1.agent.ops.control.failover_off, 2, "m1 saw it cleared")
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "failover works again")
    await asyncio.sleep(0.2)
    assert store.rows["c1"].failover_off_since is None, "the take-overs before `fos enable` do not trip it again"
    await m1.kill()
    await m2.kill()


async def test_a_long_maintenance_is_recorded_as_a_reminder_once_per_period(store: MemoryLeaseStore) -> None:
    m1 = Node(config(tables={"maintenance": {"remind_after": 0.4}}), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: kinds(store).count(EventKind.MAINTENANCE_REMINDER) == 2, 3, "two reminders")
    assert "run `fos maintenance off`" in detail_of(store, EventKind.MAINTENANCE_REMINDER)
    await asyncio.sleep(0.25)
    assert kinds(store).count(EventKind.MAINTENANCE_REMINDER) == 2, "one per remind_after, not one per read"
    await m1.kill()


async def test_a_node_that_stepped_down_for_its_app_is_not_failed_back_to(store: MemoryLeaseStore) -> None:
    cfg = config(cluster={"failback": "auto", "failback_delay": 0.3}, priorities=(10, 0))
    m1, m2 = Node(cfg, "m1", store).start(), Node(cfg, "m2", store)
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2.start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3)
    await asyncio.sleep(1.5)  # hold-off, then well past the fail-back delay
    assert m2.agent.role is Role.ACTIVE and m1.agent.role is Role.STANDBY
    assert EventKind.SWITCHOVER_REQUESTED not in kinds(store)
    await m1.kill()
    await m2.kill()


async def test_binding_the_common_ip_is_recorded_between_the_acquisition_and_the_promotion(
    store: MemoryLeaseStore,
) -> None:
    m1 = Node(config(ttl=3.6, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, 5)
    await until(lambda: EventKind.IP_BOUND in kinds(store), 2)
    order = [k for k in kinds(store) if k in (EventKind.ACQUIRED, EventKind.IP_BOUND, EventKind.PROMOTED)]
    assert order == [EventKind.ACQUIRED, EventKind.IP_BOUND, EventKind.PROMOTED]
    assert "10.0.0.100/24 bound" in detail_of(store, EventKind.IP_BOUND)
    await m1.kill()


async def test_a_stop_just_after_maintenance_ended_stops_the_app_as_usual(store: MemoryLeaseStore) -> None:
    m1 = Node(config(), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")

    async def no_control_read(acting: bool) -> HolderPlan:
        return HolderPlan(HolderAction.KEEP)  # the holder has not re-read the control state since

    m1.agent.ops.read_as_holder = no_control_read  # type: ignore[method-assign]
    assert await store.set_maintenance("c1", False, "op@host")
    m1.agent.request_stop("SIGTERM")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 2)
    assert not m1.app.detached and m1.app.stopped_at and not m1.binder.bound
    assert store.rows["c1"].holder is None and EventKind.RELEASED in kinds(store)


async def test_with_failover_off_a_holder_that_cannot_restart_its_app_keeps_the_lease_for_its_node(
    store: MemoryLeaseStore,
) -> None:
    m1, m2 = await pair(store)
    assert await store.set_failover_off("c1", "m1", "test: flapping")
    await until(lambda: m1.agent.ops.control.failover_off, 2, "m1 saw it")
    start = m1.app.start
    attempts: list[float] = []

    async def failing_once(env: dict[str, str]) -> None:
        attempts.append(time.monotonic())
        await start(env)
        if len(attempts) == 1:
            m1.app.crash()  # the restart in place fails: m1 steps down

    m1.app.start = failing_once  # type: ignore[method-assign]
    m1.app.crash()
    await until(lambda: len(attempts) == 2 and m1.agent.role is Role.ACTIVE, 5, "m1 serving again")
    # A release would have left the lease to nobody (only the holder's node may acquire with failover off).
    assert EventKind.RELEASED not in kinds(store) and m2.agent.role is Role.STANDBY
    assert store.rows["c1"].holder == "m1"
    await m1.kill()
    await m2.kill()


async def test_a_cluster_disabled_during_the_let_go_is_released_not_handed_over(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store)
    stop = m1.app.stop

    async def operator_disables_meanwhile() -> None:
        await store.set_disabled("c1", True, "op@host")  # after the holder saw the switchover, before its handover
        await stop()

    m1.app.stop = operator_disables_meanwhile  # type: ignore[method-assign]
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: bool(m1.app.stopped_at) and m1.agent.role is Role.STANDBY, 2, "m1 let go")
    await asyncio.sleep(0.3)
    assert EventKind.HANDOVER not in kinds(store) and EventKind.RELEASED in kinds(store)
    assert store.rows["c1"].holder is None and store.rows["c1"].handover_to is None
    assert m2.agent.role is Role.STANDBY
    await m1.kill()
    await m2.kill()


# ---- review of the agent's side (each once a defect) -----------------------------------------------------------


class _Counting:
    """A per-agent view of the shared store that counts this agent's reads."""

    def __init__(self, inner: MemoryLeaseStore) -> None:
        self.inner, self.reads = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return await self.inner.read(*args, **kwargs)


class _SlowAcquire:
    """A per-agent view of the shared store whose acquisitions take `delay` seconds."""

    def __init__(self, inner: MemoryLeaseStore, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def try_acquire(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        return await self.inner.try_acquire(*args, **kwargs)


async def _stopped_in_maintenance(store: MemoryLeaseStore, cfg: Any) -> tuple[Node, Node]:
    """m1 holds, m2 stands by, maintenance on, m1's agent stopped (its app left running)."""
    m1 = Node(cfg, "m1", store, instance="i0").start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: ("c1", "m2") in store.nodes, what="m2 row")
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    m1.agent.request_stop("SIGTERM")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 3)
    assert m1.app.detached and m1.app.running()
    return m1, m2


async def test_a_standby_stops_an_adopted_app_once_another_node_serves(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=0.6, heartbeat=0.15)
    _, m2 = await _stopped_in_maintenance(store, cfg)
    # The restarted agent adopted the app (holder m1, maintenance on); maintenance goes off before it acquires.
    m1b = Node(cfg, "m1", _SlowAcquire(store, 0.3), instance="i1")  # type: ignore[arg-type]
    m1b.app._running = True
    m1b.start()
    assert await store.set_maintenance("c1", False, "op@host")
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 took over")
    await until(lambda: not m1b.app.running(), 1, "the adopted app stopped on standby m1")
    assert m1b.agent.role is Role.STANDBY and m2.app.running()
    await m1b.kill()
    await m2.kill()


async def test_a_slow_app_stop_during_a_switchover_is_still_a_handover(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store, ttl=0.6, heartbeat=0.15)
    m1.app.stop_seconds = 1.2  # two ttls
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: m2.agent.role is Role.ACTIVE, 4, "m2 active")
    await until(lambda: EventKind.SWITCHOVER_DONE in kinds(store), 2, "SWITCHOVER_DONE")
    ks = kinds(store)
    assert EventKind.TAKEOVER not in ks and EventKind.SWITCHOVER_FAILED not in ks, ks
    assert m2.app.started_at[0] > m1.app.stopped_at[-1], "m2 started its app while m1's was still stopping"
    await m1.kill()
    await m2.kill()


async def test_during_maintenance_a_restarted_holder_does_not_stop_an_unhealthy_adopted_app(
    store: MemoryLeaseStore,
) -> None:
    health = {"interval": 0.05, "timeout": 0.05, "start_grace": 0.3, "tcp": 9}
    m1 = Node(config(ttl=0.6, heartbeat=0.15), "m1", store, instance="i0").start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    m1.agent.request_stop("SIGTERM")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 3)
    m1b = Node(config(ttl=0.6, heartbeat=0.15, health=health), "m1", store, instance="i0")  # nothing on port 9
    m1b.app._running = True  # adopted, mid-upgrade
    m1b.start()
    await until(lambda: m1b.agent.role is Role.ACTIVE, 2, "m1 holding again")
    await asyncio.sleep(1.5)
    assert (len(m1b.app.stopped_at), len(m1b.app.started_at)) == (0, 0), "fos touched the app in maintenance"
    assert m1b.agent.role is Role.ACTIVE and (await store.read("c1")).held_by("m1")
    await m1b.kill()


async def test_a_target_does_not_poll_fast_while_the_cluster_is_disabled(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=3, heartbeat=1)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    counted = _Counting(store)
    m2 = Node(cfg, "m2", counted).start()  # type: ignore[arg-type]
    await until(lambda: ("c1", "m2") in store.nodes and store.nodes[("c1", "m2")].role == "standby", what="m2")
    assert await store.request_switchover("c1", "m2", 1500, "op@host")
    assert await store.set_disabled("c1", True, "op@host")
    await until(lambda: m1.agent.role is Role.STANDBY, 3, "m1 let go")
    await asyncio.sleep(1.6)  # the request is due now, and nobody may act on it
    before = counted.reads
    await asyncio.sleep(2.0)
    assert counted.reads - before <= 6, f"m2 read {counted.reads - before} times in 2 s (heartbeat 1 s)"
    await m1.kill()
    await m2.kill()


async def test_fail_back_does_not_ping_pong_when_the_nodes_disagree_on_priority(store: MemoryLeaseStore) -> None:
    cl = {"failback": "auto", "failback_delay": 0.5}  # asked again only after 5 s (RETRY_AFTER_DELAYS)
    m1 = Node(config(cluster=cl, priorities=(10, 0)), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(config(cluster=cl, priorities=(0, 10)), "m2", store).start()  # m2's file prefers m2
    await asyncio.sleep(4.0)
    assert kinds(store).count(EventKind.HANDOVER) == 0, kinds(store)
    assert m1.agent.role is Role.ACTIVE
    assert "make [[nodes]] priority the same in every node's file" in detail_of(store, EventKind.SWITCHOVER_FAILED)
    # m2 gives up after MAX_ATTEMPTS requests, one per delay, instead of asking every heartbeat for ever.
    assert kinds(store).count(EventKind.SWITCHOVER_REQUESTED) == MAX_ATTEMPTS, kinds(store)
    await m1.kill()
    await m2.kill()


@pytest.mark.parametrize("rebooted", [False, True])
async def test_restarting_the_holders_agent_during_maintenance_is_not_flapping(
    store: MemoryLeaseStore, rebooted: bool
) -> None:
    cfg = config(ttl=0.6, heartbeat=0.15, tables={"flap": {"max_takeovers": 2, "window": 3600}})
    m1 = Node(cfg, "m1", store, instance="i0").start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: ("c1", "m2") in store.nodes, what="m2 row")
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    for i in range(1, 4):  # three restarts of the holder's agent: an upgrade, a config fix, ...
        m1.agent.request_stop("SIGTERM")
        assert m1.task is not None
        await asyncio.wait_for(m1.task, 3)
        m1 = again = Node(cfg, "m1", store, instance=f"i{i}" if rebooted else "i0").start()
        await until(lambda n=again: n.agent.role is Role.ACTIVE, 5, f"m1 serving again #{i}")  # type: ignore[misc]
    await asyncio.sleep(0.5)
    assert not (await store.read("c1")).control.failover_off, kinds(store)
    await m1.kill()
    await m2.kill()


async def test_a_switchover_cancelled_during_a_slow_let_go_leaves_the_holder_serving(store: MemoryLeaseStore) -> None:
    m1, m2 = await pair(store, ttl=0.6, heartbeat=0.15)
    m1.app.stop_seconds = 1.0
    stopping = m1.app.stopping
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await asyncio.wait_for(stopping.wait(), 2)
    assert await store.cancel_switchover("c1", "op@host")  # the operator changes their mind mid-way
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.app.running(), 3, "m1 serving again")
    state = await store.read("c1")
    assert state.held_by("m1") and m2.agent.role is Role.STANDBY and not m2.app.started_at
    assert EventKind.HANDOVER not in kinds(store) and EventKind.TAKEOVER not in kinds(store), kinds(store)
    await m1.kill()
    await m2.kill()


async def test_a_node_that_stepped_down_for_its_app_stays_unproven_across_an_agent_restart(
    store: MemoryLeaseStore, tmp_path: Path
) -> None:
    mark = str(tmp_path / "c1-m1.failback-unproven")
    cfg = config(cluster={"failback": "auto", "failback_delay": 0.3}, priorities=(10, 0))
    m1, m2 = Node(cfg, "m1", store, unproven_mark=mark).start(), Node(cfg, "m2", store)
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2.start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3)
    assert os.path.exists(mark)  # noqa: ASYNC240 - a test's one-off check
    await m1.kill()  # restarted (a crash, an upgrade): the new agent still knows its app failed here
    m1 = Node(cfg, "m1", store, unproven_mark=mark, instance="m1-again").start()
    await asyncio.sleep(1.5)  # well past the fail-back delay
    assert m2.agent.role is Role.ACTIVE and m1.agent.role is Role.STANDBY
    assert EventKind.SWITCHOVER_REQUESTED not in kinds(store)
    await m1.kill()
    await m2.kill()


async def test_taking_back_a_lease_released_under_maintenance_is_no_switchover(store: MemoryLeaseStore) -> None:
    # A release under maintenance keeps the releasing node in handover_to (the only one allowed back): the lease
    # looks reserved for it, but no switchover happened, so none is recorded as done.
    cfg = config(ttl=0.6, heartbeat=0.15)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    epoch = m1.agent.epoch
    await m1.kill()
    assert epoch is not None and await store.release("c1", "m1", epoch)
    assert (await store.read("c1")).handover_to == "m1"
    m1 = Node(cfg, "m1", store, instance="m1-again").start()
    await until(lambda: m1.agent.role is Role.ACTIVE, 3, "m1 serving again")
    await asyncio.sleep(0.3)
    assert EventKind.SWITCHOVER_DONE not in kinds(store), kinds(store)
    await m1.kill()


async def test_an_app_adopted_from_an_older_keeper_is_restarted_under_ours_once_maintenance_ends(
    store: MemoryLeaseStore,
) -> None:
    m1 = Node(config(ttl=0.6, heartbeat=0.15), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    assert await store.set_maintenance("c1", True, "op@host")
    await until(lambda: m1.agent.ops.control.maintenance, 2, "m1 saw maintenance")
    m1.app._unattached = True  # as if adopted from a keeper that cannot re-attach
    await asyncio.sleep(0.5)
    assert (len(m1.app.stopped_at), len(m1.app.started_at)) == (0, 1), "touched during maintenance"
    assert await store.set_maintenance("c1", False, "op@host")
    await until(lambda: len(m1.app.started_at) == 2, 2, "the app restarted under our keeper")
    assert len(m1.app.stopped_at) == 1 and m1.app.stopped_at[0] < m1.app.started_at[1]
    await until(lambda: m1.agent.role is Role.ACTIVE, 2, "m1 active again")
    assert m1.binder.bound and not m1.app.unattached()
    await m1.kill()


async def test_a_switchover_cancelled_while_the_app_stops_restarts_the_app_even_under_maintenance(
    store: MemoryLeaseStore,
) -> None:
    """The app was stopped by fos itself (the let-go), not by the operator: maintenance, switched on meanwhile,
    must not leave the node holding the IP with no application for as long as it lasts (invariant 5)."""
    m1, m2 = await pair(store, ttl=0.6, heartbeat=0.15)
    m1.app.stop_seconds = 0.5
    stopping = m1.app.stopping
    try:
        assert await store.request_switchover("c1", "m2", 0, "op@host")
        await asyncio.wait_for(stopping.wait(), 2)
        # The operator changes their mind: no switchover, an in-place upgrade of m1 under maintenance instead.
        assert await store.cancel_switchover("c1", "op@host")
        assert await store.set_maintenance("c1", True, "op@host")
        await until(lambda: m1.agent.role is Role.ACTIVE and m1.app.running() is True, 5, "m1 serving again")
        assert m1.binder.bound and not m2.binder.bound and not m2.app.running()
    finally:
        await m1.kill()
        await m2.kill()


async def test_fail_back_given_up_asks_again_after_ten_delays(store: MemoryLeaseStore) -> None:
    delay = 0.2
    cl = {"failback": "auto", "failback_delay": delay}
    m1 = Node(config(cluster=cl, priorities=(10, 0)), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(config(cluster=cl, priorities=(0, 10)), "m2", store).start()  # m2's file prefers m2: refused
    try:

        def requests() -> int:
            return kinds(store).count(EventKind.SWITCHOVER_REQUESTED)

        await until(lambda: requests() == MAX_ATTEMPTS and m2.agent.failback.attempts == MAX_ATTEMPTS, 5, "given up")
        given_up = time.monotonic()
        await until(lambda: requests() == MAX_ATTEMPTS + 1, RETRY_AFTER_DELAYS * delay + 3, "asked again")
        assert time.monotonic() - given_up >= RETRY_AFTER_DELAYS * delay - 0.5, "asked again before 10 delays"
        assert m1.agent.role is Role.ACTIVE
    finally:
        await m1.kill()
        await m2.kill()
