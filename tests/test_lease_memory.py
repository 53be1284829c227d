"""The in-memory fake keeps the SQL store's rules that the agent's unit tests rely on."""

from __future__ import annotations

from lease import EventKind, LeaseState
from lease.memory import MemoryLeaseStore


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
