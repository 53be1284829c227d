"""What a dead or frozen client can do to everyone else: nothing beyond its own deadline.

A client frozen in the middle of a lease change (the freezable proxy stops moving its bytes, as a host that died
without FIN or RST) must not keep the lease row locked; a connection whose set-up fails or hangs must be closed on
its own thread, never on the event loop; and abandoned connection threads are bounded per store.
"""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pyodbc
import pytest

import lease.odbc
from lease import SqlLeaseStore, StoreUnavailable
from tests.conftest import unique
from tests.support.dbservers import DbServer
from tests.support.tcpproxy import FreezableProxy

TTL_MS = 500
CALL_TIMEOUT = 1.0
MAX_THREADS = getattr(SqlLeaseStore, "DEFAULT_MAX_THREADS", 8)


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> DbServer:
    name = "pg_server" if request.param == "postgresql" else "mariadb_server"
    found: DbServer = request.getfixturevalue(name)
    return found


@pytest.fixture
def proxy(server: DbServer) -> Iterator[FreezableProxy]:
    p = FreezableProxy(server.host, server.port)
    yield p
    p.thaw()
    p.close()


async def _init(server: DbServer) -> None:
    s = SqlLeaseStore(server.dsn(), call_timeout=10)
    await s.init_schema()
    await s.close()


def _odbc_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fos-odbc")]


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    """Wait until `condition()` holds or `seconds` have passed (the caller asserts afterwards)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


_LEASE_UPDATE = re.compile(r"UPDATE \S*fos_lease", re.IGNORECASE)


@pytest.mark.parametrize("change", ["acquire", "release"])
async def test_a_client_frozen_inside_a_lease_change_does_not_block_the_next_compare_and_set(
    server: DbServer, proxy: FreezableProxy, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    await _init(server)
    cluster = unique("frozen")
    armed = False
    frozen_after_update = asyncio.Event()
    real_execute = lease.odbc.OwnedConnection.execute

    async def execute_then_freeze(self: Any, sql: str, params: Any = ()) -> Any:
        result = await real_execute(self, sql, params)
        if armed and _LEASE_UPDATE.match(sql) and not frozen_after_update.is_set():
            proxy.freeze()  # the lease UPDATE has been answered; everything after it is stuck on the wire
            frozen_after_update.set()
        return result

    monkeypatch.setattr(lease.odbc.OwnedConnection, "execute", execute_then_freeze)
    frozen_client = SqlLeaseStore(server.dsn(Port=str(proxy.port)), call_timeout=CALL_TIMEOUT)
    other = SqlLeaseStore(server.dsn(), call_timeout=CALL_TIMEOUT)
    await other.ensure_cluster(cluster)
    if change == "acquire":
        armed = True
        stuck = asyncio.create_task(frozen_client.try_acquire(cluster, "m1", TTL_MS))
    else:
        held = await frozen_client.try_acquire(cluster, "m1", 60000)
        armed = True
        stuck = asyncio.create_task(frozen_client.release(cluster, "m1", held.epoch))
    await asyncio.wait_for(frozen_after_update.wait(), 5)
    started = time.monotonic()
    acquired_after: float | None = None
    errors: list[str] = []
    while time.monotonic() - started < 8.0:
        try:
            got = await other.try_acquire(cluster, "m2", 5000)
        except StoreUnavailable as exc:
            errors.append(str(exc))
            continue
        if got.acquired:
            acquired_after = time.monotonic() - started
            break
        await asyncio.sleep(max(0.01, (got.seen.remaining_ms or 0) / 1000.0))
    proxy.thaw()
    await asyncio.gather(stuck, return_exceptions=True)
    await frozen_client.close()
    await other.close()
    bound = (TTL_MS / 1000.0 if change == "acquire" else 0.0) + CALL_TIMEOUT + 0.5
    assert acquired_after is not None, f"the other node never acquired while a client was frozen: {errors[:2]}"
    print(f"{server.kind} {change}: other node acquired {acquired_after:.3f}s after the freeze (bound {bound:.1f}s)")
    assert acquired_after < bound


async def test_session_guards_bound_lock_waits_on_the_server(server: DbServer) -> None:
    await _init(server)
    store = SqlLeaseStore(server.dsn(), call_timeout=1.5)
    await store.read(unique("c"))
    conn = store._idle[0]
    if server.kind == "postgresql":
        _, rows = await conn.execute("SHOW lock_timeout")
        assert rows[0][0] == "1500ms"
        _, rows = await conn.execute("SHOW idle_in_transaction_session_timeout")
        assert rows[0][0] not in ("0", "0ms")
    else:
        _, rows = await conn.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
        assert int(rows[0][0]) == 2  # whole seconds, rounded up from the call timeout
        _, rows = await conn.execute("SELECT @@SESSION.idle_transaction_timeout")
        assert int(rows[0][0]) == 2
    await store.close()


class _LoopThreadOdbcCalls:
    """Records every call of a pyodbc object's method made on this (the event loop's) thread."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, pyodbc.Connection | pyodbc.Cursor):
                self.calls.append(f"{type(owner).__name__}.{arg.__name__}")

    def __enter__(self) -> _LoopThreadOdbcCalls:
        sys.setprofile(self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


async def test_a_failed_session_setup_closes_its_connection_off_the_event_loop(pg_server: DbServer) -> None:
    await _init(pg_server)
    # statement_timeout beyond PostgreSQL's integer range: the per-session SET fails after the connect succeeded.
    store = SqlLeaseStore(pg_server.dsn(), call_timeout=1e11)
    before = set(_odbc_threads())  # threads of earlier tests may still be finishing: judge only ours
    with _LoopThreadOdbcCalls() as seen:
        with pytest.raises(StoreUnavailable):
            await store.read(unique("c"), timeout=3)
        gc.collect()
    await _until(lambda: not set(_odbc_threads()) - before, 5)
    await store.close()
    assert seen.calls == [], f"ODBC calls ran on the event loop thread: {seen.calls}"
    assert not set(_odbc_threads()) - before, "the failed connection's thread is still alive"


async def test_connection_threads_are_bounded_under_repeated_timeouts(server: DbServer, proxy: FreezableProxy) -> None:
    await _init(server)
    store = SqlLeaseStore(server.dsn(Port=str(proxy.port)), call_timeout=0.2)
    proxy.freeze()
    # Threads of earlier tests may still be finishing: count only the ones this test starts.
    before = set(_odbc_threads())

    def started_here() -> int:
        return sum(1 for t in _odbc_threads() if t not in before)

    fast_failures = 0
    with _LoopThreadOdbcCalls() as seen:
        for _ in range(16):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.read(unique("c"), timeout=0.2)
            if time.monotonic() - started < 0.05:
                fast_failures += 1
            assert started_here() <= MAX_THREADS
        gc.collect()
    assert seen.calls == [], f"ODBC calls ran on the event loop thread: {seen.calls}"
    assert fast_failures >= 16 - MAX_THREADS
    proxy.thaw()
    await _until(lambda: started_here() == 0, 10)
    assert started_here() == 0, "abandoned connection threads did not finish after the thaw"
    assert (await store.read(unique("c"), timeout=5)).epoch == 0
    await store.close()
