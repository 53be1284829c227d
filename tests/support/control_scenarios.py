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
    await _expired(store, cluster, expire)
    assert await store.set_maintenance(cluster, True, "op@h")


async def _maintenance_released(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.release(cluster, "m1", got.epoch)
    assert await store.set_maintenance(cluster, True, "op@h")


async def _failover_off_expired(store: Any, cluster: str, expire: Expire) -> None:
    await _expired(store, cluster, expire)
    assert await store.set_failover_off(cluster, "m1", "4 take-overs in 3600 s")


async def _enabled_after_failover_off(store: Any, cluster: str, expire: Expire) -> None:
    await _failover_off_expired(store, cluster, expire)
    assert await store.set_disabled(cluster, False, "op@h")  # `fos enable` clears the anti-flap trip


async def _handed_over(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
    assert await store.handover(cluster, "m1", got.epoch, "m2", TTL)


async def _reservation_ended(store: Any, cluster: str, expire: Expire) -> None:
    got = await store.try_acquire(cluster, "m1", TTL, instance="i1")
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
    Scenario("maintenance, released: nobody", _maintenance_released, (("m1", "i1", False), ("m2", "i2", False))),
    Scenario("failover off: only the holder's node", _failover_off_expired, (("m2", "i2", False), ("m1", "i1", True))),
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
