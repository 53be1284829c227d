"""The acquire rule of schema v3 as scenarios any ControlStore + LeaseStore must pass: the same table runs
against the in-memory fake (tests/test_lease_memory.py) and the real databases (tests/test_lease_control.py), so
the fake cannot drift from the SQL compare-and-set."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

TTL = 60_000
Expire = Callable[[str], Awaitable[None]]  # runs the cluster's lease (or reservation) out on the database clock
Setup = Callable[[Any, str, Expire], Awaitable[None]]
Case = Setup  # a self-checking case: (store, fresh cluster, expire)


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Setup
    tries: tuple[tuple[str, str | None, bool], ...]  # (node, instance, acquired?) — each on a fresh setup


async def _free(store: Any, cluster: str, expire: Expire) -> None:
    await store.ensure_cluster(cluster) if hasattr(store, "ensure_cluster") else await store.read(cluster)


async def _held(store: Any, cluster: str, expire: Expire) -> None:
    assert (await store.try_acquire(cluster, "m1", TTL, instance="i1")).acquired


async def _expired(store: Any, cluster: str, expire: Expire) -> None:
    assert (await store.try_acquire(cluster, "m1", 1, instance="i1")).acquired
    await expire(cluster)


async def _disabled_free(store: Any, cluster: str, expire: Expire) -> None:
    await _free(store, cluster, expire)
    assert await store.set_disabled(cluster, True, "op@h")


async def _disabled_expired(store: Any, cluster: str, expire: Expire) -> None:
    await _expired(store, cluster, expire)
    assert await store.set_disabled(cluster, True, "op@h")


async def _maintenance_held(store: Any, cluster: str, expire: Expire) -> None:
    await _held(store, cluster, expire)
    assert await store.set_maintenance(cluster, True, "op@h")


async def _maintenance_expired(store: Any, cluster: str, expire: Expire) -> None:
    # The holder's agent stopped during maintenance (application and IP left in place) and its lease ran out.
    assert (await store.try_acquire(cluster, "m1", 1000, instance="i1")).acquired
    assert await store.set_maintenance(cluster, True, "op@h")
    await expire(cluster)


async def _maintenance_released(store: Any, cluster: str, expire: Expire) -> None:
    # The holder released during maintenance (a step-down, a restart): the release keeps its node as handover_to.
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.set_maintenance(cluster, True, "op@h")
    assert await store.release(cluster, "m1", got.epoch)


async def _failover_off_released(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.set_failover_off(cluster, "m1", "4 take-overs in 3600 s")
    assert await store.release(cluster, "m1", got.epoch)


async def _failover_off_expired(store: Any, cluster: str, expire: Expire) -> None:
    await _expired(store, cluster, expire)
    assert await store.set_failover_off(cluster, "m1", "4 take-overs in 3600 s")


async def _enabled_after_failover_off(store: Any, cluster: str, expire: Expire) -> None:
    await _failover_off_expired(store, cluster, expire)
    assert await store.set_disabled(cluster, False, "op@h")  # `fos enable` clears the anti-flap trip


async def _handed_over(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    assert await store.handover(cluster, "m1", got.epoch, "m2", TTL)


async def _reservation_ended(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    assert await store.handover(cluster, "m1", got.epoch, "m2", 1)
    await expire(cluster)


SCENARIOS = (
    Scenario("never held: anyone", _free, (("m2", "i2", True),)),
    Scenario(
        "held: only the same node and instance", _held, (("m2", "i2", False), ("m1", "i9", False), ("m1", "i1", True))
    ),
    Scenario("expired: anyone", _expired, (("m2", "i2", True), ("m1", "i9", True))),
    Scenario("disabled and free: nobody", _disabled_free, (("m1", "i1", False), ("m2", None, False))),
    Scenario("disabled: not even the holder", _disabled_expired, (("m1", "i1", False), ("m2", "i2", False))),
    Scenario("maintenance, held: the holder resumes", _maintenance_held, (("m1", "i1", True), ("m2", "i2", False))),
    Scenario(
        "maintenance, expired: only the holder's node",
        _maintenance_expired,
        (("m2", "i2", False), ("m1", "i9", True)),
    ),
    Scenario(
        "maintenance, released: only the releasing node",
        _maintenance_released,
        (("m2", "i2", False), ("m1", "i9", True), ("m1", None, True)),
    ),
    Scenario("failover off: only the holder's node", _failover_off_expired, (("m2", "i2", False), ("m1", "i1", True))),
    Scenario(
        "failover off, released: only the releasing node",
        _failover_off_released,
        (("m2", "i2", False), ("m3", None, False), ("m1", "i1", True), ("m1", "i9", True)),
    ),
    Scenario("enable clears failover off", _enabled_after_failover_off, (("m2", "i2", True),)),
    Scenario(
        "handover reservation: only the target",
        _handed_over,
        (("m3", "i3", False), ("m1", "i1", False), ("m2", "i2", True), ("m2", None, True)),
    ),
    Scenario("reservation ended: anyone", _reservation_ended, (("m3", "i3", True), ("m1", "i1", True))),
)


async def check(scenario: Scenario, store: Any, fresh_cluster: Callable[[], str], expire: Expire) -> None:
    """Every try of the scenario on its own fresh cluster: acquired as the table says, the epoch bumped exactly
    then, and handover_to cleared by a successful acquire."""
    for node, instance, want in scenario.tries:
        cluster = fresh_cluster()
        await scenario.setup(store, cluster, expire)
        before = await store.read(cluster)
        refusal = before.acquire_refusal(node, instance)
        got = await store.try_acquire(cluster, node, TTL, instance=instance)
        after = await store.read(cluster)
        what = f"{scenario.name}: {node}/{instance}"
        assert got.acquired == want, f"{what}: acquired {got.acquired}, refusal {refusal!r}"
        assert (refusal is None) == want, f"{what}: acquire_refusal says {refusal!r}"
        if want:
            assert (after.holder, after.epoch, after.handover_to) == (node, before.epoch + 1, None), what
        else:
            assert (after.holder, after.epoch) == (before.holder, before.epoch), what


# ---- the handover is keyed to the request and to the control state -----------------------------------------------
# Each case runs on a fresh cluster against the fake and the real databases. A False handover changes nothing: the
# caller still holds its unexpired lease and keeps it (renewals go on; the same instance may resume it).


async def _holds_still(store: Any, cluster: str, node: str, epoch: int) -> None:
    state = await store.read(cluster)
    assert (state.holder, state.epoch, state.handover_to) == (node, epoch, None), state
    assert await store.renew(cluster, node, epoch, TTL)
    assert (await store.try_acquire(cluster, node, TTL, instance="i1")).acquired  # the same instance resumes


async def handover_after_cancel_and_maintenance_on_does_nothing(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    seen = (await store.read(cluster)).control.switchover
    # the holder is letting go of the IP and the app; meanwhile the operator cancels and turns maintenance on
    assert await store.cancel_switchover(cluster, "op@h")
    assert await store.set_maintenance(cluster, True, "op@h")
    assert not await store.handover(cluster, "m1", got.epoch, "m2", TTL, request_id=seen.id)
    assert not await store.handover(cluster, "m1", got.epoch, "m2", TTL)
    await _holds_still(store, cluster, "m1", got.epoch)


async def handover_with_failover_off_does_nothing(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m3", 0, "op@h")
    assert await store.set_failover_off(cluster, "m1", "4 take-overs in 3600 s")
    assert not await store.handover(cluster, "m1", got.epoch, "m3", TTL)
    await _holds_still(store, cluster, "m1", got.epoch)


async def handover_when_disabled_does_nothing_and_disable_clears_the_request(
    store: Any, cluster: str, expire: Expire
) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    assert await store.set_disabled(cluster, True, "op@h")
    assert (await store.read(cluster)).control.switchover is None  # the disable statement cleared it
    assert not await store.handover(cluster, "m1", got.epoch, "m2", TTL)
    assert (await store.read(cluster)).holder == "m1"
    kinds = [e.kind for e in await store.list_events(cluster, limit=2)]
    assert kinds == ["switchover_cancelled", "disabled"]


async def handover_needs_a_pending_request_to_that_target(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert not await store.handover(cluster, "m1", got.epoch, "m2", TTL)  # nothing requested
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    assert not await store.handover(cluster, "m1", got.epoch, "m3", TTL)  # requested for another node
    await _holds_still(store, cluster, "m1", got.epoch)


async def handover_and_cancel_act_only_on_their_request(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    first = (await store.read(cluster)).control.switchover
    assert await store.cancel_switchover(cluster, "op@h")  # the operator cancels the first request
    assert await store.request_switchover(cluster, "m2", 0, "op@h")  # and asks again
    second = (await store.read(cluster)).control.switchover
    assert first.id is not None and second.id is not None and second.id > first.id
    # the holder acts on what it read first: neither its cancel nor its handover touches the new request
    assert not await store.cancel_switchover(cluster, "m1", kind="switchover_failed", request_id=first.id)
    assert not await store.handover(cluster, "m1", got.epoch, "m2", TTL, request_id=first.id)
    still = (await store.read(cluster)).control.switchover
    assert still is not None and (still.id, still.to) == (second.id, "m2")
    assert await store.handover(cluster, "m1", got.epoch, "m2", TTL, request_id=second.id)
    state = await store.read(cluster)
    assert state.reserved_for == "m2" and state.control.switchover is None


async def handover_reservation_is_capped_at_the_lease_ttl(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", 5_000, instance="i1")
    assert await store.request_switchover(cluster, "m2", 0, "op@h")
    assert await store.handover(cluster, "m1", got.epoch, "m2", 10 * TTL)
    assert 0 < (await store.read(cluster)).remaining_ms <= 5_000


async def maintenance_needs_a_held_lease(store: Any, cluster: str, expire: Expire) -> None:
    # Maintenance on a free lease would keep everyone out of it (the acquire gate): nobody would serve.
    assert not await store.set_maintenance(cluster, True, "op@h")  # no row
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.release(cluster, "m1", got.epoch)
    assert not await store.set_maintenance(cluster, True, "op@h")  # released
    got = await store.try_acquire(cluster, "m2", 1000, instance="i2")
    await expire(cluster)
    assert not await store.set_maintenance(cluster, True, "op@h")  # expired
    assert not (await store.read(cluster)).control.maintenance
    assert (await store.try_acquire(cluster, "m1", TTL, instance="i1")).acquired
    assert await store.set_maintenance(cluster, True, "op@h")  # held


CONTROL_CASES = (
    maintenance_needs_a_held_lease,
    handover_after_cancel_and_maintenance_on_does_nothing,
    handover_with_failover_off_does_nothing,
    handover_when_disabled_does_nothing_and_disable_clears_the_request,
    handover_needs_a_pending_request_to_that_target,
    handover_and_cancel_act_only_on_their_request,
    handover_reservation_is_capped_at_the_lease_ttl,
)
