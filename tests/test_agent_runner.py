"""The agent's loop against the in-memory store, a fake binder and a fake application: fast checks of the
role transitions and their order (IP before app), including hung and failing database calls."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.app import AppError
from agent.common_ip import PROBE_AHEAD_FRESH_S
from agent.http import STALL_HEARTBEATS
from agent.roles import Role
from agent.runner import AgentFailed
from agent.timing import KERNEL_LATENESS_S, NODE_ROW_HEARTBEATS
from lease import AcquireResult, EventKind, LeaseState, SchemaMissing, StoreUnavailable
from lease.memory import MemoryLeaseStore
from netops import NetopsError
from tests.support.agents import Node, boottime, config, until
from tests.support.fakes import FakeBinder, JumpingClock


def first_unbind_after_bind(binder: FakeBinder) -> float:
    bound = binder.times("bind")[-1]
    return min(t for t in binder.times("unbind") if t > bound)


@pytest.fixture
async def store() -> AsyncIterator[MemoryLeaseStore]:
    yield MemoryLeaseStore(clock=boottime)


async def test_a_single_node_acquires_binds_starts_the_app_and_becomes_active(store: MemoryLeaseStore) -> None:
    m1 = Node(config(), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="active")
    assert m1.binder.bound and m1.app.env == {"FOS_NODE": "m1", "FOS_CLUSTER": "c1", "FOS_EPOCH": "1"}
    assert [e.kind for e in store.events] == [EventKind.ACQUIRED, EventKind.PROMOTED]
    first_expiry = store.rows["c1"].expires_at
    await until(lambda: store.rows["c1"].expires_at > first_expiry + 0.2, what="renewals to extend the lease")
    assert (await store.read("c1")).held_by("m1")
    await m1.kill()


async def test_hung_renewals_fence_the_holder_before_the_lease_can_expire(store: MemoryLeaseStore) -> None:
    cfg = config()
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    hang = asyncio.Event()

    async def hung_renew(*args: Any, **kwargs: Any) -> bool:
        await hang.wait()  # a database call that never returns
        return True

    store.renew = hung_renew  # type: ignore[method-assign]
    expiry = store.rows["c1"].expires_at  # no renewal can move it any more
    await until(lambda: m1.agent.role is Role.STANDBY and not m1.binder.bound, 3, "fenced back to standby")
    unbound, stopped = first_unbind_after_bind(m1.binder), m1.app.stopped_at[-1]
    assert unbound <= stopped, "the IP must go before the app stops"
    # The IP was dropped before the database could consider the lease expired (both clocks read CLOCK_BOOTTIME).
    unbound_boottime = boottime() - (time.monotonic() - unbound)
    assert unbound_boottime < expiry, f"IP dropped {unbound_boottime - expiry:.3f}s after the lease expired"
    assert any(e.kind == EventKind.FENCED for e in store.events)
    await m1.kill()


async def test_a_renewal_that_finds_another_epoch_fences_at_once(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=3, heartbeat=0.5), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    store.rows["c1"].epoch += 1  # someone else's acquisition
    took = await until(lambda: m1.agent.role is Role.STANDBY, 2, "fenced")
    assert took < 1.0 and not m1.binder.bound
    await m1.kill()


async def test_app_failure_steps_down_and_the_standby_takes_over(store: MemoryLeaseStore) -> None:
    cfg = config()
    m1, m2 = Node(cfg, "m1", store).start(), None
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    assert not m1.binder.bound and m1.agent.role is Role.STANDBY
    assert any(e.kind == EventKind.STEPPED_DOWN and e.node == "m1" for e in store.events)
    # m1 holds off instead of flapping back.
    await asyncio.sleep(0.3)
    assert m2.agent.role is Role.ACTIVE
    await m1.kill()
    await m2.kill()


async def test_graceful_stop_drops_the_ip_stops_the_app_and_releases(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=30, heartbeat=2), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m1.agent.request_stop("test")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 3)
    assert m1.agent.role is Role.STOPPED and not m1.binder.bound
    assert first_unbind_after_bind(m1.binder) <= m1.app.stopped_at[-1]
    assert store.rows["c1"].holder is None
    assert store.events[-2].kind == EventKind.RELEASED


async def test_standby_acquires_right_at_expiry_not_at_its_next_poll(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=1.0, heartbeat=0.3)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    await m1.kill()
    expiry = store.rows["c1"].expires_at
    await until(lambda: store.rows["c1"].holder == "m2", 3, "take-over")
    late = (store.rows["c1"].expires_at - cfg.lease.ttl) - expiry
    assert 0 <= late < 0.05, f"took over {late:.3f}s after expiry"
    await m2.kill()


async def test_a_database_outage_shorter_than_the_fence_deadline_changes_nothing(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=1.2, heartbeat=0.2)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    roles: list[Role] = []
    store.available = False
    for _ in range(40):  # 0.4 s, a third of the ttl
        roles.append(m1.agent.role)
        await asyncio.sleep(0.01)
    store.available = True
    await asyncio.sleep(0.4)
    assert set(roles) == {Role.ACTIVE} and m1.agent.role is Role.ACTIVE
    assert store.rows["c1"].epoch == 1 and m1.binder.bound
    assert m1.agent.metrics.renew_failures._value.get() >= 1
    await m1.kill()


async def test_a_restarted_agent_resumes_its_own_lease_without_a_failover(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=2, heartbeat=0.5)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    await m1.kill()
    again = Node(cfg, "m1", store, binder=m1.binder).start()
    await until(lambda: again.agent.role is Role.ACTIVE, 3, "resumed")
    assert store.rows["c1"].holder == "m1" and store.rows["c1"].epoch == 2
    assert [e.kind for e in store.events if e.kind in (EventKind.RESUMED, EventKind.TAKEOVER)] == [EventKind.RESUMED]
    assert m2.agent.role is Role.STANDBY
    await again.kill()
    await m2.kill()


async def test_a_conflicting_address_aborts_promotion_and_releases_the_lease(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store, binder=FakeBinder(conflict=True)).start()
    await until(lambda: any(e.kind == EventKind.STEPPED_DOWN for e in store.events), 3, "step-down")
    assert not m1.binder.bound and m1.app.started_at == []
    assert store.rows["c1"].holder is None
    await m1.kill()


async def test_the_app_starts_once_the_address_is_bound_while_it_is_being_announced(store: MemoryLeaseStore) -> None:
    binder = FakeBinder()
    binder.announce_seconds = 1.0  # announce.count x announce.interval
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store, binder=binder).start()
    await until(lambda: m1.app.started_at and binder.times("announce"), 3, "the app's start and the announcement")
    bound = binder.times("bind")[0]
    assert bound <= binder.times("announce")[0] and bound <= m1.app.started_at[0] < bound + 0.3
    await until(lambda: m1.agent.role is Role.ACTIVE, 3, "active once announced and healthy")
    assert time.monotonic() >= binder.times("announce")[0] + binder.announce_seconds
    await m1.kill()


async def test_a_standby_removes_a_common_ip_left_bound_by_a_crash(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=30, heartbeat=2)
    holder = Node(cfg, "m2", store).start()
    await until(lambda: holder.agent.role is Role.ACTIVE)
    m1 = Node(cfg, "m1", store, binder=FakeBinder(bound=True)).start()
    await until(lambda: not m1.binder.bound, 2, "leftover IP removed")
    assert m1.agent.role is Role.STANDBY
    await m1.kill()
    await holder.kill()


async def test_the_kernel_lifetime_always_ends_before_the_fence_deadline(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=4, heartbeat=0.5, driver="netlink")
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    await until(lambda: len(m1.binder.times("bind")) >= 3, 5, "re-binds")
    for name, _, lifetime in m1.binder.ops:
        if name in ("bind", "refresh"):
            assert lifetime is not None and lifetime >= 1
    fence_at = m1.agent.fence_at
    assert fence_at is not None
    last_refresh = m1.binder.times("bind")[-1]
    # lifetime (whole seconds) + kernel lateness must end before the fence deadline
    written = boottime() - (time.monotonic() - last_refresh)
    assert written + (m1.binder.lifetime or 0) + KERNEL_LATENESS_S <= fence_at + 1e-6
    await m1.kill()


# ---- faults found in review (issue 9): each test failed on the runner before the fix -------------------------


class _NeverAcquires(MemoryLeaseStore):
    """try_acquire that never succeeds although the lease looks free (a row the store cannot create)."""

    def __init__(self) -> None:
        super().__init__(clock=boottime)
        self.attempts = 0

    async def try_acquire(self, cluster: str, node: str, ttl_ms: int, **kwargs: Any) -> AcquireResult:
        self.attempts += 1
        return AcquireResult(False, 0, LeaseState(cluster, None, 0, None))


async def test_a_standby_never_retries_a_failed_acquisition_without_waiting() -> None:
    store = _NeverAcquires()
    m1 = Node(config(), "m1", store).start()
    await asyncio.sleep(0.5)
    await m1.kill()
    # At most one attempt per MIN_RETRY_S (0.02 s): 25 in 0.5 s, with some slack for timer granularity.
    assert 1 <= store.attempts <= 30, f"{store.attempts} attempts in 0.5 s: the loop spins"


async def test_an_active_node_whose_address_was_dropped_late_binds_it_again(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    # One netlink write delayed 1.4 s: the lifetime it carried would now outlive the fence deadline, so the
    # agent drops the address...
    m1.binder.delays = [1.4]
    await until(lambda: not m1.binder.bound, 4, "the late address dropped")
    # ...and the next successful renewal puts it back (the lease is still ours): never ACTIVE without the IP.
    await until(lambda: m1.binder.bound, 2, "the address bound again")
    assert m1.agent.role is Role.ACTIVE and store.rows["c1"].epoch == 1
    await m1.kill()


async def test_the_address_lifetime_is_computed_after_the_conflict_probe(store: MemoryLeaseStore) -> None:
    binder = FakeBinder(probe_seconds=0.6)
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store, binder=binder)
    overruns: list[float] = []
    original_bind = binder.bind

    async def checked_bind(lifetime: int | None = None, **kwargs: Any) -> bool:
        added = await original_bind(lifetime, **kwargs)
        lifetime = binder.lifetime  # as written, after any cap at the write
        fence_at = m1.agent.fence_at
        assert lifetime is not None and fence_at is not None
        if boottime() + lifetime + KERNEL_LATENESS_S > fence_at:
            overruns.append(boottime() + lifetime + KERNEL_LATENESS_S - fence_at)
        return added

    binder.bind = checked_bind  # type: ignore[method-assign]
    m1.start()
    await until(lambda: m1.agent.role is Role.ACTIVE and binder.bound, 3)
    assert overruns == [], f"a kernel lifetime outlived the fence deadline by {max(overruns):.3f}s"
    await m1.kill()


async def test_a_holder_frozen_past_its_deadline_never_re_adds_or_announces_the_ip(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    first_expiry = store.rows["c1"].expires_at
    await until(lambda: store.rows["c1"].expires_at > first_expiry, 2, "a renewal")
    frozen_at = time.monotonic()
    original_renew = store.renew

    async def freezing_renew(*args: Any, **kwargs: Any) -> bool:
        store.renew = original_renew  # type: ignore[method-assign]
        sent_ok = await original_renew(*args, **kwargs)
        time.sleep(4.5)  # noqa: ASYNC251 -- the whole process stops (SIGSTOP) with the renewal's answer in hand, then resumes
        return sent_ok

    store.renew = freezing_renew  # type: ignore[method-assign]
    await until(lambda: m1.agent.role is Role.STANDBY, 8, "fenced after the thaw")
    after = [(op, round(t - frozen_at, 3)) for op, t, _ in m1.binder.ops if t > frozen_at and op != "unbind"]
    assert after == [], f"after the freeze the agent still did {after}"
    assert not m1.binder.bound
    await m1.kill()


async def test_a_holder_frozen_inside_a_netlink_write_never_re_adds_the_ip_on_thaw(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    first_expiry = store.rows["c1"].expires_at
    await until(lambda: store.rows["c1"].expires_at > first_expiry, 2, "a renewal")
    frozen_at = time.monotonic()
    # The next write of the address stops the process after it read the address's state and before it wrote:
    # the kernel's lifetime runs out meanwhile, and by the database's clock the lease expires too.
    m1.binder.freeze_before_write = 4.5
    await until(lambda: m1.agent.role is Role.STANDBY, 8, "fenced after the thaw")
    after = [(op, round(t - frozen_at, 3)) for op, t, _ in m1.binder.ops if t > frozen_at and op != "unbind"]
    assert after == [], f"after the freeze the agent still did {after}"
    assert not m1.binder.bound
    await m1.kill()


async def test_a_holder_fences_at_once_when_the_machine_resumes_from_suspend() -> None:
    clock = JumpingClock()
    store = MemoryLeaseStore(clock=clock.now)
    m1 = Node(config(ttl=30, heartbeat=5), "m1", store, clock=clock).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    await asyncio.sleep(0.05)
    clock.suspend(40)  # longer than the ttl: by the database's clock the lease is long gone
    took = await until(lambda: not m1.binder.bound, 2, "the IP dropped after the resume")
    assert took < 0.3, f"the IP stayed {took:.2f}s after the resume"
    await until(lambda: m1.agent.role is Role.STANDBY, 2)
    assert any(e.kind == EventKind.FENCED for e in store.events)
    await m1.kill()


async def test_an_unexpected_error_drops_the_ip_stops_the_app_and_releases(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    m1.binder.fail_with = RuntimeError("netlink said something unexpected")
    assert m1.task is not None
    with pytest.raises(AgentFailed, match="RuntimeError: netlink said something unexpected"):
        await asyncio.wait_for(m1.task, 5)
    assert not m1.binder.bound and m1.app.stopped_at, "the IP and the app must be gone"
    assert store.rows["c1"].holder is None, "the lease must be released"


async def test_another_agent_with_the_same_node_name_cannot_take_a_live_lease(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=0.9, heartbeat=0.2)
    first = Node(cfg, "m1", store, instance="host-a").start()
    await until(lambda: first.agent.role is Role.ACTIVE)
    clone = Node(cfg, "m1", store, instance="host-b").start()  # a cloned VM, or a second `fos run --node m1`
    await asyncio.sleep(2 * cfg.lease.ttl)
    assert store.rows["c1"].epoch == 1 and store.rows["c1"].instance == "host-a"
    assert clone.agent.role is Role.STANDBY and not clone.binder.bound
    await first.kill()
    await until(lambda: clone.agent.role is Role.ACTIVE, 3, "the clone takes over only after the expiry")
    assert [e.kind for e in store.events if e.kind in (EventKind.RESUMED, EventKind.TAKEOVER)] == [EventKind.TAKEOVER]
    await clone.kill()


async def test_a_node_that_let_go_no_longer_reports_failing_renewals(store: MemoryLeaseStore) -> None:
    m1 = Node(config(), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    store.available = False
    await until(lambda: m1.agent.role is Role.STANDBY, 3, "fenced")
    assert not m1.agent.renew_failing and m1.agent.health.healthy is None
    await m1.kill()


# ---- found by the adversarial review of the new runner: each failed before its fix ----------------------------


async def test_a_lease_is_not_released_while_the_ip_could_not_be_removed(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)

    async def failing_unbind() -> bool:
        raise NetopsError("cannot remove 10.0.0.100/24 on eth0: too many open files")

    m1.binder.unbind = failing_unbind  # type: ignore[method-assign]
    m1.agent.request_stop("test")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 5)
    # Released, the standby would take over at once while the address is still here; kept, the lease expires
    # only after the kernel removed the address (its lifetime ends before the fence deadline).
    assert store.rows["c1"].holder == "m1" and not any(e.kind == EventKind.RELEASED for e in store.events)
    assert m1.app.stopped_at, "the application is stopped all the same"


async def test_a_promotion_without_room_for_a_lifetime_waits_for_the_next_renewal(store: MemoryLeaseStore) -> None:
    # The probe takes so long that not even a 1 s lifetime fits before the acquisition's fence deadline.
    binder = FakeBinder(probe_seconds=0.7)  # ends before the first renewal (heartbeat 1 s)
    m1 = Node(config(ttl=4, heartbeat=1, driver="netlink"), "m1", store, binder=binder).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, 4, "active after the next renewal made room")
    assert binder.bound and not any(e.kind == EventKind.STEPPED_DOWN for e in store.events)
    await m1.kill()


async def test_a_standby_does_not_remove_an_address_that_appears_after_it_settled(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=30, heartbeat=0.2)
    holder = Node(cfg, "m2", store).start()
    await until(lambda: holder.agent.role is Role.ACTIVE)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.STANDBY and len(m1.binder.times("unbind")) >= 1)
    # Another agent on this machine (a second node name by mistake) binds an address with fos's marker: this
    # standby must not delete it on every poll.
    m1.binder._write(None)
    await asyncio.sleep(3 * cfg.lease.heartbeat)
    assert m1.binder.bound and len(m1.binder.times("unbind")) == 1
    await m1.kill()
    await holder.kill()


async def test_a_schema_missing_for_a_moment_at_run_time_is_an_outage_not_an_exit(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=1.2, heartbeat=0.2), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    original_renew = store.renew

    async def no_table(*args: Any, **kwargs: Any) -> bool:
        raise SchemaMissing("the fos tables are missing: run `fos init-db --config FILE` first")

    store.renew = no_table  # type: ignore[method-assign]
    await asyncio.sleep(0.3)  # shorter than the fence deadline
    store.renew = original_renew  # type: ignore[method-assign]
    await asyncio.sleep(0.4)
    assert m1.task is not None and not m1.task.done(), "the agent must not exit"
    assert m1.agent.role is Role.ACTIVE and store.rows["c1"].epoch == 1
    await m1.kill()


async def test_a_healthy_holder_keeps_its_address_when_renewals_answer_with_jitter(store: MemoryLeaseStore) -> None:
    # ttl 3 leaves a kernel lifetime of one second: a renewal answered later than the one before must still come
    # in time to extend it. Latencies alternate between fast and nearly the call timeout (0.5 s).
    m1 = Node(config(ttl=4, heartbeat=1, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    original_renew = store.renew
    latencies = iter([0.02, 0.4] * 100)

    async def jittery_renew(*args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(next(latencies))
        return await original_renew(*args, **kwargs)

    store.renew = jittery_renew  # type: ignore[method-assign]
    lapsed = 0
    end = time.monotonic() + 5
    while time.monotonic() < end:
        lapsed += not m1.binder.bound
        await asyncio.sleep(0.01)
    assert m1.agent.role is Role.ACTIVE and store.rows["c1"].epoch == 1
    assert lapsed == 0, f"the address was missing in {lapsed} samples of a healthy holder"
    await m1.kill()


# ---- found by the second review --------------------------------------------------------------------------------


async def _failing_bind(*args: Any, **kwargs: Any) -> bool:
    raise NetopsError("10.0.0.100 is already configured on eth0 but not by fos: remove it by hand")


async def test_a_promotion_whose_bind_keeps_failing_steps_down_and_the_standby_serves(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=4, heartbeat=0.5, driver="netlink")
    m1 = Node(cfg, "m1", store)
    m1.binder.bind = _failing_bind  # type: ignore[method-assign]
    m1.start()
    await until(lambda: any(e.kind == EventKind.STEPPED_DOWN for e in store.events), 4, "m1 stepping down")
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.ACTIVE, 6, "m2 serving")
    assert m1.app.started_at == [], "m1 never started its app without the address"
    await m1.kill()
    await m2.kill()


async def test_an_active_node_that_cannot_manage_its_address_steps_down(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=0.5, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    m1.binder.bind = _failing_bind  # type: ignore[method-assign]
    await until(lambda: any(e.kind == EventKind.STEPPED_DOWN for e in store.events), 4, "stepping down")
    assert m1.agent.role is Role.STANDBY and store.rows["c1"].holder is None
    await m1.kill()


async def test_renewals_failing_at_once_are_not_retried_back_to_back(store: MemoryLeaseStore) -> None:
    m1 = Node(config(ttl=4, heartbeat=1, driver="netlink"), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and m1.binder.bound)
    calls = store.calls
    store.available = False  # every call fails at once
    await until(lambda: m1.agent.role is not Role.ACTIVE, 4, "fenced")
    # about 2.8 s until the fence at one attempt per quarter heartbeat: a dozen, not thousands
    assert store.calls - calls < 30, f"{store.calls - calls} calls before the fence"
    await m1.kill()


async def test_an_idle_agent_writes_its_node_row_every_few_heartbeats_and_at_once_on_a_change(
    store: MemoryLeaseStore,
) -> None:
    writes: list[tuple[float, str]] = []
    record = store.record_node

    async def counted(cluster: str, node: str, role: str, healthy: bool | None, *args: Any, **kwargs: Any) -> None:
        writes.append((time.monotonic(), role))
        await record(cluster, node, role, healthy, *args, **kwargs)

    store.record_node = counted  # type: ignore[method-assign]
    heartbeat = 0.2
    m1 = Node(config(ttl=2, heartbeat=heartbeat), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and writes[-1][1] == "active", 3, "active, and recorded")
    began = time.monotonic()
    await asyncio.sleep(12 * heartbeat)  # observing a rate: the writes of an idle holder over 12 heartbeats
    idle = [w for w in writes if w[0] >= began]
    assert 12 / NODE_ROW_HEARTBEATS - 2 <= len(idle) <= 12 / NODE_ROW_HEARTBEATS + 1, idle
    crashed = time.monotonic()
    m1.app.crash()
    await until(lambda: any(t >= crashed and r != "active" for t, r in writes), 2 * heartbeat, "the step-down row")
    await m1.kill()


# ---- warm mode (application.mode = "warm"): the app runs on every node, only the IP moves ----------------------


@pytest.fixture
async def health_port() -> AsyncIterator[int]:
    """A port that accepts connections: the warm nodes' TCP health check (each node's app is told apart by its
    FakeApp: a crash or a failed start is that node's alone)."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def warm_config(port: int, **kw: Any) -> Any:
    health = {"tcp": port, "interval": 0.05, "timeout": 0.05, "start_grace": 1}
    return config(mode="warm", command="unused", health=health, **kw)


async def warm_pair(store: MemoryLeaseStore, cfg: Any) -> tuple[Node, Node]:
    """m1 active, then m2 a live standby whose warm app is healthy (its node row written)."""
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(cfg, "m2", store).start()
    await until(
        lambda: m2.agent.role is Role.STANDBY and m2.agent.app_ready() and ("c1", "m2") in store.nodes,
        what="m2 a healthy standby",
    )
    return m1, m2


async def test_warm_the_standby_runs_the_app_and_takes_over_without_starting_a_second_copy(
    store: MemoryLeaseStore, health_port: int
) -> None:
    cfg = warm_config(health_port)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.role is Role.STANDBY and m2.agent.health.healthy is True, what="m2 healthy standby")
    assert m2.app.env == {"FOS_NODE": "m2", "FOS_CLUSTER": "c1"} and len(m2.app.started_at) == 1
    assert not m2.binder.bound
    await m1.kill()  # vanishes holding the lease
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active after the expiry")
    assert m2.binder.bound and len(m2.app.started_at) == 1 and not m2.app.stopped_at  # the same copy serves
    assert [e.kind for e in store.events if e.node == "m2"][-1] == EventKind.PROMOTED
    await m2.kill()


async def test_warm_an_app_failure_steps_down_and_the_app_is_restarted_not_stopped_by_the_let_go(
    store: MemoryLeaseStore, health_port: int
) -> None:
    cfg = warm_config(health_port)
    m1, m2 = await warm_pair(store, cfg)
    m1.app.crash()
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    await until(lambda: m1.agent.role is Role.STANDBY and m1.agent.app_ready(), 3, "m1 a healthy standby again")
    assert not m1.binder.bound and any(e.kind == EventKind.STEPPED_DOWN and e.node == "m1" for e in store.events)
    # One stop (the supervisor's, of the crashed copy) and one restart: the let-go stopped nothing.
    assert len(m1.app.stopped_at) == 1 and len(m1.app.started_at) == 2
    assert len(m2.app.started_at) == 1
    await m1.kill()
    await m2.kill()


async def test_warm_a_standby_whose_app_is_unhealthy_lets_the_lease_lapse_until_it_is_healthy(
    store: MemoryLeaseStore, health_port: int
) -> None:
    cfg = warm_config(health_port)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store).start()
    await until(lambda: m2.agent.app_ready())

    async def failing_start(env: dict[str, str]) -> None:
        raise AppError("cannot start application.command: test")

    real_start, m2.app.start = m2.app.start, failing_start  # type: ignore[method-assign]
    m2.app.crash()
    await until(lambda: not m2.agent.app_ready(), what="m2 unhealthy")
    await m1.kill()
    expiry = store.rows["c1"].expires_at
    while boottime() < expiry + 2 * cfg.lease.ttl:  # well past the expiry: nobody takes it
        assert m2.agent.role is Role.STANDBY and store.rows["c1"].holder == "m1" and not m2.binder.bound
        await asyncio.sleep(0.02)
    m2.app.start = real_start  # type: ignore[method-assign]
    await until(lambda: m2.agent.role is Role.ACTIVE, 5, "m2 active once its app is healthy")
    await m2.kill()


async def test_warm_a_stopping_agent_lets_go_then_stops_its_app(store: MemoryLeaseStore, health_port: int) -> None:
    m1 = Node(warm_config(health_port, ttl=30, heartbeat=2), "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m1.agent.request_stop("test")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 3)
    assert m1.agent.role is Role.STOPPED and not m1.binder.bound and store.rows["c1"].holder is None
    assert len(m1.app.stopped_at) == 1 and first_unbind_after_bind(m1.binder) <= m1.app.stopped_at[-1]


async def test_warm_a_switchover_moves_only_the_ip(store: MemoryLeaseStore, health_port: int) -> None:
    cfg = warm_config(health_port, ttl=3, heartbeat=0.5)
    m1, m2 = await warm_pair(store, cfg)
    assert store.nodes[("c1", "m2")].app_healthy is True  # a warm standby's row: its app's real health
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    assert any(e.kind == EventKind.HANDOVER for e in store.events) and m2.binder.bound and not m1.binder.bound
    assert not m1.app.stopped_at and not m2.app.stopped_at  # both apps kept running
    assert len(m1.app.started_at) == 1 and len(m2.app.started_at) == 1
    assert m1.agent.app_ready()
    await m1.kill()
    await m2.kill()


# ---- the conflict probe ahead of an acquisition (agent/common_ip.py probe_ahead) ----------------------------


async def test_a_standby_probes_once_ahead_of_the_expiry_and_binds_right_after_acquiring(
    store: MemoryLeaseStore,
) -> None:
    cfg = config(ttl=4, heartbeat=0.5, driver="netlink")
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store, binder=FakeBinder(probe_seconds=cfg.probe_timeout)).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    await m1.kill()
    await until(lambda: m2.binder.bound, 6, "m2 to bind the common IP")
    (probed,), bound = m2.binder.times("probe"), m2.binder.times("bind")[0]
    acquired = next(t for e, t in zip(store.events, store.event_times, strict=True) if e.kind == EventKind.TAKEOVER)
    probed_boottime = boottime() - (time.monotonic() - probed)
    # One round, during the wait, before the acquisition; it ended (probed + probe_timeout) just before the bind.
    assert probed_boottime < acquired, f"the round began {probed_boottime - acquired:.3f}s after the acquisition"
    assert 0 <= bound - (probed + cfg.probe_timeout) < 0.1, f"bound {bound - probed:.3f}s after the round began"
    await until(lambda: m2.agent.role is Role.ACTIVE, 3, "m2 active")
    assert m2.binder.times("probe") == [probed], "no probe after the acquisition"
    await m2.kill()


async def test_a_stop_request_ends_the_standbys_wait_at_once_while_a_round_ahead_runs(store: MemoryLeaseStore) -> None:
    cfg = config(ttl=4, heartbeat=0.5, driver="netlink")
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store, binder=FakeBinder(probe_seconds=30)).start()  # a round that would last
    await until(lambda: m2.agent.role is Role.STANDBY)
    await m1.kill()
    await until(lambda: m2.binder.times("probe"), 6, "the round ahead of the expiry")
    m2.agent.request_stop("test")
    assert m2.task is not None
    await asyncio.wait_for(m2.task, 0.5)
    assert m2.agent.role is Role.STOPPED and not m2.binder.bound
    assert not m2.agent.ip.probing_ahead, "the round ahead ends with the agent"


async def test_a_holder_that_renews_after_the_round_ahead_keeps_its_lease_and_the_round_decides_nothing(
    store: MemoryLeaseStore,
) -> None:
    """A live holder whose renewals fail for a while (its database link) and succeed again between the standby's
    round ahead and the expiry: the standby's read at the expiry finds the lease renewed, so it never acquires
    nor binds, whatever its round heard."""
    cfg = config(ttl=4, heartbeat=0.5, driver="netlink", cluster={"probe_timeout": 1.0})  # a round of a second
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store, binder=FakeBinder(probe_seconds=cfg.probe_timeout)).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    renew, failing = store.renew, True

    async def renew_unless_failing(*args: Any, **kwargs: Any) -> bool:
        if failing:
            raise StoreUnavailable("the holder's database link is down")
        return await renew(*args, **kwargs)

    store.renew = renew_unless_failing  # type: ignore[method-assign]
    expiry = store.rows["c1"].expires_at  # on CLOCK_BOOTTIME, as the store's clock
    await until(lambda: m2.binder.times("probe"), 6, "the standby's round ahead of the expiry")
    assert boottime() < expiry - 0.2 and m1.agent.role is Role.ACTIVE
    failing = False  # the holder's next renewal attempt (every heartbeat/4) succeeds, before its fence deadline
    await until(lambda: store.rows["c1"].expires_at > expiry, 1, "the holder to renew")
    await asyncio.sleep(expiry + 0.5 - boottime())  # past the old expiry: the standby's read there came and went
    assert m1.agent.role is Role.ACTIVE and m1.agent.epoch == 1
    assert m2.agent.role is Role.STANDBY and not m2.binder.times("bind")
    assert not any(e.kind == EventKind.TAKEOVER for e in store.events)
    await m1.kill()
    await m2.kill()


# ---- adversarial review (h-rev1): warm supervisor and probe-ahead defects ---------------------------------------


async def test_warm_a_start_raising_oserror_is_retried_like_a_failed_start_not_left_unsupervised(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """A transient fork failure (EAGAIN) or an unwritable pidfile raises OSError, not AppError, out of
    Application.start. The supervisor's task must survive it (retry with its backoff) as it does an AppError: a
    dead task leaves the node unhealthy for ever (a standby never competes again) and nobody notices."""
    cfg = warm_config(health_port)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    real_start, failures = m1.app.start, [OSError(11, "Resource temporarily unavailable")]

    async def start_failing_once(env: dict[str, str]) -> None:
        if failures:
            raise failures.pop()
        await real_start(env)

    m1.app.start = start_failing_once  # type: ignore[method-assign]
    m1.app.crash()
    await until(lambda: not failures, 3, "the restart that fails with OSError")
    await until(lambda: m1.agent.app_ready(), 3, "the app restarted after the failed start and healthy again")
    await m1.kill()


async def test_warm_an_agent_stop_after_a_supervisor_error_still_stops_the_app_and_ends_cleanly(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """Whatever ended the supervisor's task, the agent's stop must still stop the application and end without an
    exception (WarmSupervisor.close awaits the dead task, which re-raises its error before app.stop())."""
    cfg = warm_config(health_port, ttl=30, heartbeat=2)
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)

    calls: list[float] = []

    async def start_failing(env: dict[str, str]) -> None:
        calls.append(time.monotonic())
        raise OSError(11, "Resource temporarily unavailable")

    m1.app.start = start_failing  # type: ignore[method-assign]
    m1.app.crash()
    await until(lambda: m1.agent.role is Role.STANDBY, 3, "m1 steps down for the failed app")
    await until(lambda: bool(calls), 3, "the supervisor's restart, failing with OSError")
    stops = len(m1.app.stopped_at)
    m1.app._running = True  # the failed start's process is up after all (e.g. spawned, then the pidfile failed)
    m1.agent.request_stop("test")
    assert m1.task is not None
    await asyncio.wait_for(m1.task, 3)  # raises the supervisor's OSError on the old code
    assert m1.agent.role is Role.STOPPED and len(m1.app.stopped_at) > stops, "the app is stopped with the agent"


async def test_warm_a_switchover_to_a_standby_whose_app_fell_sick_leaves_no_gap_of_a_ttl(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """A switchover due while its target's warm app is unhealthy (scheduled earlier, or a fail-back's request
    seen by the holder up to half a heartbeat later; `fos switchover` checks the row only when it is given): the
    holder checks the target's row (target_problem) for role and liveness but not for app health, hands the lease
    over, and the target's warm gate refuses to acquire it: nobody may acquire the reserved lease for a whole ttl,
    and nobody serves meanwhile. The holder should refuse (keep serving), or the target take the reserved lease and
    fail its promotion at once (a release)."""
    cfg = warm_config(health_port, ttl=3, heartbeat=0.5)
    m1, m2 = await warm_pair(store, cfg)

    async def failing_start(env: dict[str, str]) -> None:
        raise AppError("cannot start application.command: test")

    m2.app.start = failing_start  # type: ignore[method-assign]
    m2.app.crash()
    await until(lambda: store.nodes[("c1", "m2")].app_healthy is False, 3, "m2's row: app unhealthy")
    assert await store.request_switchover("c1", "m2", 0, "op@host")
    began = last_served = boottime()
    longest = 0.0
    while boottime() < began + cfg.lease.ttl + 1:
        now = boottime()
        if m1.binder.bound or m2.binder.bound:
            last_served = now
        longest = max(longest, now - last_served)
        await asyncio.sleep(0.01)
    assert longest < 1.0, f"nobody served the common IP for {longest:.2f}s after the switchover request"
    await m1.kill()
    await m2.kill()


async def test_a_clear_round_ahead_does_not_spare_the_probe_when_the_acquisition_answered_long_after_it(
    store: MemoryLeaseStore,
) -> None:
    """PROBE_AHEAD_FRESH_S bounds the time between the round's end and the bind in which another host could take
    the address unseen. claim() measured it to when the acquisition was *sent*, so a compare-and-set answered late
    (up to the call timeout; here 0.8 s) bound with no probe that long after the round."""
    cfg = config(ttl=6, heartbeat=2, driver="netlink")  # call timeout 1 s; room for a lifetime after a slow answer
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    m2 = Node(cfg, "m2", store, binder=FakeBinder(probe_seconds=cfg.probe_timeout)).start()
    await until(lambda: m2.agent.role is Role.STANDBY)
    real_acquire, answered = store.try_acquire, []

    async def slow_answer(*args: Any, **kwargs: Any) -> AcquireResult:
        got = await real_acquire(*args, **kwargs)
        if got.acquired:
            await asyncio.sleep(0.8)  # the answer comes back late (a slow link), within the call timeout
            answered.append(time.monotonic())
        return got

    store.try_acquire = slow_answer  # type: ignore[method-assign]
    await m1.kill()
    await until(lambda: m2.binder.bound, 10, "m2 to bind the common IP")
    last_round_end = max(m2.binder.times("probe")) + cfg.probe_timeout
    assert last_round_end >= answered[0] - PROBE_AHEAD_FRESH_S, (
        f"the last probe round ended {answered[0] - last_round_end:.3f}s before the acquisition answered, and the "
        "claim bound without probing again"
    )
    await m2.kill()


async def test_warm_a_holder_whose_app_fails_once_with_no_healthy_standby_is_not_left_idle_for_its_hold_off(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """Warm mode: the holder knows whether any standby can take over (their rows, and they compete only while
    healthy). With the only standby's app sick, a holder whose own app fails once steps down all the same
    (APP_FAILED -> DEMOTING with hold_off) and releases: its supervisor has the app healthy again within a fraction
    of a second, but it may not compete for hold_off (30 s by default; 3 s here) and the sick standby never does, so
    nobody serves for the whole hold-off: longer than a failover (ttl 2 s). Restarting in place (as with automatic
    failover off), or competing again at once when no warm standby is healthy, would serve within ~a second."""
    cfg = warm_config(health_port, ttl=2, heartbeat=0.5, hold_off=3)
    m1, m2 = await warm_pair(store, cfg)

    async def failing_start(env: dict[str, str]) -> None:
        raise AppError("cannot start application.command: test")

    m2.app.start = failing_start  # type: ignore[method-assign]
    m2.app.crash()
    await until(lambda: not m2.agent.app_ready(), 3, "m2 sick")
    m1.app.crash()  # one crash; the restart works
    await until(lambda: not m1.binder.bound, 3, "m1 to let go of the IP")
    gone = boottime()
    await until(lambda: m1.agent.app_ready(), 3, "m1's app healthy again under its supervisor")
    healthy_after = boottime() - gone
    await until(lambda: m1.binder.bound or m2.binder.bound, 6, "a node serving again")
    idle = boottime() - gone
    assert idle < cfg.lease.ttl, (
        f"nobody served for {idle:.2f}s although m1's app was healthy again after {healthy_after:.2f}s"
    )
    await m1.kill()
    await m2.kill()


async def test_warm_an_active_whose_checks_fail_drops_the_ip_before_its_app_is_stopped(
    store: MemoryLeaseStore,
) -> None:
    """letgo.py's order, IP first, then the app (from then on no user traffic reaches this node): in warm mode the
    supervisor stops the active's failing app at once (same loop step as the unhealthy verdict), while the IP is
    still bound and the step-down has not even begun."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        m1 = Node(warm_config(port, ttl=3, heartbeat=0.5), "m1", store).start()
        await until(lambda: m1.agent.role is Role.ACTIVE)
        server.close()
        await server.wait_closed()  # the checks fail from now on (the process still runs)
        await until(lambda: bool(m1.app.stopped_at) and not m1.binder.bound, 3, "the app stopped and the IP gone")
        assert first_unbind_after_bind(m1.binder) <= m1.app.stopped_at[0], "the app was stopped before the IP went"
        await m1.kill()
    finally:
        server.close()


# ---- review h-rev3 ------------------------------------------------------------------------------------------------


class _SlowUnbind(FakeBinder):
    """A removal of the address that takes `seconds` (a loaded host's netlink call); recorded once it is gone."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def unbind(self) -> bool:
        await asyncio.sleep(self.seconds)
        return await super().unbind()


async def test_warm_a_fenced_holder_drops_the_ip_before_its_failed_app_is_stopped(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """letgo.py's order, IP first, then the app, holds for a fence as for a step-down. The warm supervisor waits for
    the let-go only while serving() says ACTIVE or DEMOTING with the IP bound: a FENCED node is still removing the
    address, yet an application failing then (it lost the same database link as the renewals) was stopped at once,
    with the IP still bound."""
    cfg = warm_config(health_port, ttl=2, heartbeat=0.5)
    binder = _SlowUnbind(0.5)
    m1 = Node(cfg, "m1", store, binder=binder).start()
    await until(lambda: m1.agent.role is Role.ACTIVE and binder.bound, what="m1 active")
    bound_at = binder.times("bind")[0]

    async def renewal_fails(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("the holder's database link is down")

    store.renew = renewal_fails  # type: ignore[method-assign]
    await until(lambda: m1.agent.role is Role.FENCED, 5, "m1 fencing")
    m1.app.crash()  # while the address is being removed
    await until(
        lambda: bool(m1.app.stopped_at) and any(t > bound_at for t in binder.times("unbind")),
        5,
        "the IP gone and the app stopped",
    )
    unbound = min(t for t in binder.times("unbind") if t > bound_at)
    assert unbound <= m1.app.stopped_at[0], (
        f"the app was stopped {unbound - m1.app.stopped_at[0]:.3f}s before the IP went"
    )
    await m1.kill()


async def test_an_idle_holder_with_hints_on_leaves_the_stall_rule_a_heartbeat_of_slack(store: MemoryLeaseStore) -> None:
    """GET /health and /active call the agent stalled once its loop has not passed for http.STALL_HEARTBEATS. With a
    hint listener up the holder no longer reads its control state half a heartbeat after each read, and its loop
    sleeps from one renewal to the next: up to a heartbeat between passes. With the rule at 1.5 heartbeats an
    event-loop delay of half a heartbeat already made the active node answer 503 on /active (review h-rev3); the
    rule must leave a whole heartbeat of slack."""
    heartbeat = 0.4
    cfg = dataclasses.replace(config(ttl=1.6, heartbeat=heartbeat), wake_port=47999)
    m1 = Node(cfg, "m1", store).start()
    m1.agent.hints_heard = True  # as service.serve sets it with a listener up: the holder's loop sleeps longest
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    longest, end = 0.0, time.monotonic() + 6 * heartbeat
    while time.monotonic() < end:  # sampling the loop's age over six heartbeats (a rate: not a condition)
        longest = max(longest, m1.agent.clock.now() - m1.agent.last_tick)
        await asyncio.sleep(0.01)
    await m1.kill()
    print(f"longest time between two ticks of an idle holder: {longest:.3f}s (heartbeat {heartbeat}s)")
    # (0.15 s: the loop's own scheduling on a loaded machine; with the old 1.5-heartbeat rule an idle holder fails this)
    assert longest + heartbeat <= STALL_HEARTBEATS * heartbeat + 0.15, f"{longest:.3f}s without a tick"


async def test_warm_a_fenced_holder_waits_min_hold_before_taking_its_expired_lease_back(
    store: MemoryLeaseStore, health_port: int
) -> None:
    """roles.warm_hold_off (README: "If no standby took the free lease within a heartbeat of the release ... instead
    of waiting out the hold-off") is meant for a step-down after an application failure, but let_go sets
    agent.let_go_at for every let-go (review h-rev3; now only an app failure's let-go counts), so a fence's hold-off
    (lease.min_hold, "minimum seconds between two transitions of one node") shrank to a heartbeat as soon as the lease
    was free: a holder with a flaky database link fenced and took its lease back a heartbeat later, again and again,
    whatever min_hold says."""
    base = warm_config(health_port, ttl=2, heartbeat=0.5)
    cfg = dataclasses.replace(base, lease=dataclasses.replace(base.lease, min_hold=3.0))
    m1 = Node(cfg, "m1", store).start()
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    epoch = store.rows["c1"].epoch
    renew = store.renew

    async def renewal_fails(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("the holder's database link is down")

    store.renew = renewal_fails  # type: ignore[method-assign]
    await until(lambda: any(e.kind == EventKind.FENCED for e in store.events), 5, "m1 fenced and let go")
    let_go_at = store.event_times[[e.kind for e in store.events].index(EventKind.FENCED)]  # (boottime, as below)
    store.renew = renew  # type: ignore[method-assign]  # the link is back
    await until(lambda: store.rows["c1"].epoch > epoch, 10, "m1 to acquire again")
    after = boottime() - let_go_at
    await m1.kill()
    assert after >= cfg.lease.min_hold - 0.05, f"took the lease back {after:.2f}s after the fence (min_hold 3 s)"
