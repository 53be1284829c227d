"""Failure semantics of the ODBC layer against real servers: dead peers, refused logins, missing schema."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyodbc
import pytest

from lease import (
    SchemaMissing,
    SqlLeaseStore,
    StoreAuthError,
    StoreConfigError,
    StoreUnavailable,
    redact_dsn,
)
from lease.odbc import is_lock_timeout
from tests.conftest import sqlite_dsn, unique
from tests.support import dbservers
from tests.support.dbservers import DbServer
from tests.support.tcpproxy import FreezableProxy

SERVER_DIALECTS = ["postgresql", "mysql"]


@pytest.fixture(params=SERVER_DIALECTS)
def server(request: pytest.FixtureRequest) -> DbServer:
    name = "pg_server" if request.param == "postgresql" else "mariadb_server"
    server: DbServer = request.getfixturevalue(name)
    return server


@pytest.fixture
def proxy(server: DbServer) -> Iterator[FreezableProxy]:
    p = FreezableProxy(server.host, server.port)
    yield p
    p.close()


async def _init(server: DbServer) -> None:
    s = SqlLeaseStore(server.dsn(), call_timeout=10)
    await s.init_schema()
    await s.close()


async def test_call_stuck_on_a_dead_peer_returns_at_its_deadline_and_next_call_reconnects(
    server: DbServer, proxy: FreezableProxy
) -> None:
    await _init(server)
    store = SqlLeaseStore(server.dsn(Port=str(proxy.port)), call_timeout=5)
    c = unique("c")
    got = await store.try_acquire(c, "m1", 30000)
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await store.renew(c, "m1", got.epoch, 30000, timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.8, f"renew held the caller {elapsed:.3f}s past a 0.5s deadline"
    proxy.thaw()
    assert await store.renew(c, "m1", got.epoch, 30000, timeout=5)
    await store.close()


async def test_connect_to_a_dead_peer_returns_at_its_deadline(server: DbServer, proxy: FreezableProxy) -> None:
    proxy.freeze()
    store = SqlLeaseStore(server.dsn(Port=str(proxy.port)))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.read("c1", timeout=0.4)
    assert time.monotonic() - started < 0.7


async def test_unreachable_server_raises_unavailable_within_the_deadline(server: DbServer) -> None:
    store = SqlLeaseStore(server.dsn(Port=str(dbservers.free_port())))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.read("c1", timeout=1.0)
    assert time.monotonic() - started < 1.5


async def test_wrong_password_raises_auth_error_without_the_password(server: DbServer) -> None:
    store = SqlLeaseStore(server.dsn(password="Wrong-Secret-42"))
    with pytest.raises(StoreAuthError, match="Pwd") as err:
        await store.read("c1", timeout=3)
    assert "Wrong-Secret-42" not in str(err.value)


async def test_missing_schema_says_to_run_init_db(server: DbServer) -> None:
    store = SqlLeaseStore(server.dsn(database="fos_empty"))
    with pytest.raises(SchemaMissing, match="fos init-db"):
        await store.try_acquire("c1", "m1", 1000)


async def test_missing_schema_on_sqlite_says_to_run_init_db(tmp_path: object) -> None:
    store = SqlLeaseStore(sqlite_dsn(f"{tmp_path}/empty.db"))
    with pytest.raises(SchemaMissing, match="fos init-db"):
        await store.read("c1")


async def test_dialect_is_detected_from_the_connection(server: DbServer) -> None:
    await _init(server)
    store = SqlLeaseStore(server.dsn())
    await store.read(unique("c"))
    assert store.dialect.name == server.kind
    await store.close()


async def test_mariadb_without_option_in_the_dsn_still_counts_matched_rows(mariadb_server: DbServer) -> None:
    await _init(mariadb_server)
    dsn = ";".join(p for p in mariadb_server.dsn().split(";") if not p.upper().startswith("OPTION="))
    store = SqlLeaseStore(dsn)
    c = unique("c")
    await store.try_acquire(c, "m1", 5000)
    effective = store._dsn
    await store.close()
    no_change = "UPDATE fos_lease SET epoch = epoch WHERE cluster_name = ?"
    plain = pyodbc.connect(dsn, autocommit=True)
    fixed = pyodbc.connect(effective, autocommit=True)
    try:
        # Without FOUND_ROWS MariaDB reports 0 *changed* rows for a matched row; the store's DSN must report 1.
        assert plain.cursor().execute(no_change, c).rowcount == 0
        assert fixed.cursor().execute(no_change, c).rowcount == 1
    finally:
        plain.close()
        fixed.close()


def test_unknown_dialect_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(StoreConfigError, match=r"database\.dialect 'oracle' is unknown"):
        SqlLeaseStore("Driver=X", dialect="oracle")


async def test_missing_odbc_driver_is_a_config_error() -> None:
    store = SqlLeaseStore("Driver=No Such Driver 9;Server=127.0.0.1")
    with pytest.raises(StoreConfigError, match="odbcinst"):
        await store.read("c1")


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("Driver=PostgreSQL Unicode;Server=db;Uid=fos;Pwd=s3cret;Port=5432", "s3cret"),
        ("DRIVER={ODBC Driver 18 for SQL Server};PASSWORD={a;b=c};UID=sa", "a;b=c"),
        ("Driver=x;password = hunter2", "hunter2"),
    ],
)
def test_redacted_dsn_hides_the_secret(dsn: str, secret: str) -> None:
    red = redact_dsn(dsn)
    assert secret not in red and "***" in red


@pytest.mark.parametrize(
    ("args", "lock_timeout"),
    [
        (("55P03", "[55P03] ERROR: canceling statement due to lock timeout;"), True),
        (("HY000", "[HY000] [ma-3.1.15]Lock wait timeout exceeded; try restarting transaction (1205)"), True),
        (("HY000", "[HY000] [Microsoft][ODBC Driver 18]Lock request time out period exceeded. (1222)"), True),
        (("40001", "[40001] Transaction (Process ID 52) was deadlocked on lock resources (1205)"), False),
        (("42701", 'ERROR: column "sees" of relation "fos_node" already exists'), False),
    ],
)
def test_a_lock_timeout_is_told_from_other_errors(args: tuple[str, str], lock_timeout: bool) -> None:
    assert is_lock_timeout(pyodbc.Error(*args)) is lock_timeout
