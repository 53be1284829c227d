"""Every T-SQL statement the store emits, captured at the driver boundary while the real store code runs every
operation with dialect mssql (no SQL Server runs here: the driver calls are answered by a scripted stand-in).

Checks on each captured statement: every fos object is schema-qualified, every name parameter is typed
NVARCHAR(64) (a VARCHAR column against pyodbc's NVARCHAR parameter scans and U-locks the table), no None is ever
bound (pyodbc would describe it with an extra server round trip), and it parses strictly as T-SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

import lease.odbc
from lease import EventKind, LeaseState, ProtocolViolation, SqlLeaseStore
from lease.odbc import classify
from lease.schema import SCHEMA_VERSION
from tests.test_lease_dialects import parse_strict

NAMES = {"c1", "m1", "m2", "inst-a"}
_UNQUALIFIED = re.compile(r"(?<![\w.'])fos_(lease_status|lease|node|event|schema)\b")
_TYPED_MARKER = "CAST(? AS NVARCHAR(64))"


@dataclass
class ScriptedServer:
    """Answers the store's statements the way SQL Server would for a healthy fos schema."""

    rowcount: int = 1
    version: int | None = SCHEMA_VERSION
    sent: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    stale_keys: list[tuple[str, str]] = field(default_factory=list)

    def connect(self, worker: Any, dsn: str, query_timeout_s: int, setup: Any) -> str:
        self.setup += setup("Microsoft SQL Server")
        return "Microsoft SQL Server"

    def execute(self, worker: Any, sql: str, params: tuple[Any, ...]) -> tuple[int, list[tuple[Any, ...]]]:
        self.sent.append((sql, params))
        upper = sql.upper()
        if upper.startswith("SELECT MAX(VERSION)"):
            return -1, [(self.version,)]
        if "SERVERPROPERTY" in upper:
            return -1, [("16.0.1000.6", 3)]
        if "SYS.TRIGGERS" in upper:
            return -1, []
        if "FROM SYS.COLUMNS" in upper:
            return -1, list(self.stale_keys)
        if "FROM SYS.KEY_CONSTRAINTS" in upper:
            return -1, [("PK__fos_leas__3213E83F0EA0C6B1",)]
        if upper.startswith("SELECT HOLDER_NODE"):
            return -1, [
                ("m1", 3, -50, 5000, None, "inst-a", "m2", -5, "op@h", 20, 1000, "op@h", None, None, None, None, 7)
            ]
        if upper.startswith("SELECT COUNT(*) FROM DBO.FOS_EVENT"):
            return -1, [(2,)]
        if "FROM DBO.FOS_EVENT" in upper:
            return -1, [(7, datetime(2026, 1, 1), "m1", "note", None, None)]
        if "FROM DBO.FOS_NODE" in upper and upper.startswith("SELECT NODE_NAME"):
            return -1, [("m1", "active", 1, None, "0.1", 1500, "inst-a", "maintenance")]
        if "FROM DBO.FOS_LEASE_STATUS" in upper:
            control = ("m2", datetime(2026, 1, 1), "op@h", datetime(2026, 1, 1), None, None, None, None, None, None)
            return -1, [
                ("c1", "m1", 3, 1.5, 0, None, 4, "active", 1, None, 0.4, "inst-a", *control, -2, None, None, None, 7)
            ]
        if upper.startswith("INSERT INTO DBO.FOS_SCHEMA"):
            self.version = int(params[0])
        if upper.startswith("UPDATE DBO.FOS_LEASE"):
            return self.rowcount, []
        return 1, []


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    monkeypatch.setattr(lease.odbc, "_connect", scripted.connect)
    monkeypatch.setattr(lease.odbc, "_execute", scripted.execute)
    yield scripted


async def _every_operation(store: SqlLeaseStore) -> None:
    await store.init_schema()
    await store.preflight("c1")
    await store.ensure_cluster("c1")
    await store.read("c1")
    await store.try_acquire("c1", "m1", 5000)
    await store.try_acquire("c1", "m1", 5000, instance="inst-a")
    await store.try_acquire("c1", "m2", 5000, expected=LeaseState.missing("c1"), instance="inst-a")
    await store.renew("c1", "m1", 3, 5000)
    await store.release("c1", "m1", 3)
    await store.release("c1", "m1", 3, detail="graceful stop")
    await store.record_node("c1", "m1", "active", None, None, None)
    await store.record_node("c1", "m1", "active", True, "http://m1:8080", "0.1.0", instance="inst-a")
    await store.record_event("c1", None, "note", None, None)
    await store.record_event("c1", "m1", "note", 3, "detail")
    await store.list_events("c1", limit=5)
    await store.list_events("c1", limit=5, since_ms=30 * 86_400_000)
    await store.list_nodes("c1")
    await store.status_row("c1")
    await store.record_node("c1", "m1", "standby", None, None, None, instance="inst-a", sees="maintenance")
    await store.handover("c1", "m1", 3, "m2", 5000)
    await store.handover("c1", "m1", 3, "m2", 5000, request_id=7)
    await store.request_switchover("c1", "m2", 0, "op@h")
    await store.request_switchover("c1", "m2", 60_000, "op@h")
    await store.cancel_switchover("c1", "op@h")
    await store.cancel_switchover("c1", "m1", kind=EventKind.SWITCHOVER_STALE, detail="due 5 s ago")
    await store.cancel_switchover("c1", "m1", kind=EventKind.SWITCHOVER_FAILED, detail="unknown", request_id=7)
    for on in (True, False):
        await store.set_maintenance("c1", on, "op@h")
        await store.set_disabled("c1", on, "op@h")
    await store.set_failover_off("c1", "m2", "4 take-overs within 3600 s")
    assert await store.count_events("c1", [EventKind.TAKEOVER, EventKind.ACQUIRED], 3_600_000) == 2


async def test_every_emitted_tsql_statement_is_qualified_typed_bound_without_none_and_parses(
    server: ScriptedServer,
) -> None:
    server.version = None
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql", call_timeout=2)
    await _every_operation(store)
    await store.close()
    emitted = [*((s, ()) for s in server.setup), *server.sent]
    print("\n".join(f"{sql}    -- params {params!r}" for sql, params in emitted))
    assert len({sql for sql, _ in emitted}) >= 25
    for sql, params in emitted:
        assert not _UNQUALIFIED.search(sql), f"unqualified object in: {sql}"
        assert None not in params, f"None bound in: {sql} {params!r}"
        markers = [m.start() for m in re.finditer(r"\?", sql)]
        assert len(markers) == len(params)
        for pos, value in zip(markers, params, strict=True):
            if value in NAMES:
                assert sql.startswith(_TYPED_MARKER, pos - len("CAST(")), f"untyped name parameter in: {sql}"
        for part in sql.split("; "):
            parse_strict(part, "tsql")
    assert not [sql for sql, _ in emitted if re.search(r"(cluster_name|node_name|holder_node) = \?", sql)]


async def test_a_configured_schema_qualifies_every_object(server: ScriptedServer) -> None:
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql", schema="fos")
    await store.read("c1")
    await store.close()
    assert server.sent and all(" fos.fos_" in sql or "fos.fos_" in sql for sql, _ in server.sent)


async def test_nocount_on_is_a_protocol_violation_at_once_not_a_retry(server: ScriptedServer) -> None:
    server.rowcount = -1  # SET NOCOUNT ON: SQL Server reports -1 for every statement
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql", call_timeout=2)
    with pytest.raises(ProtocolViolation, match="NOCOUNT off"):
        await store.try_acquire("c1", "m2", 5000, expected=LeaseState("c1", None, 3, -1))
    with pytest.raises(ProtocolViolation, match="NOCOUNT off"):
        await store.renew("c1", "m1", 3, 5000)
    await store.close()
    updates = [sql for sql, _ in server.sent if sql.startswith("UPDATE dbo.fos_lease")]
    assert len(updates) == 2, "a protocol violation must not be retried"


async def test_an_old_sql_server_is_refused_by_init_db(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from lease import StoreConfigError

    real = server.execute

    def old_server(worker: Any, sql: str, params: tuple[Any, ...]) -> tuple[int, list[tuple[Any, ...]]]:
        if "SERVERPROPERTY" in sql:
            return -1, [("12.0.6024.0", 3)]
        return real(worker, sql, params)

    monkeypatch.setattr(lease.odbc, "_execute", old_server)
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql")
    with pytest.raises(StoreConfigError, match="SQL Server 2016"):
        await store.init_schema()
    await store.close()
    assert not [sql for sql, _ in server.sent if "CREATE TABLE" in sql]


@pytest.mark.parametrize("native", [40613, 40197, 40501, 49918, 49919, 49920, 4060, 10928, 10929])
def test_azure_transient_errors_are_retried_by_native_number(native: int) -> None:
    import pyodbc

    exc = pyodbc.Error(
        "42000",
        f"[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]The login failed. ({native}) (SQLDriverConnect)",
    )
    assert isinstance(classify(exc), lease.odbc.TransientUnavailable)


async def test_init_db_retypes_the_varchar_keys_of_a_version_1_sql_server_database(server: ScriptedServer) -> None:
    server.version = 1
    server.stale_keys = [
        ("fos_lease", "cluster_name"),
        ("fos_node", "cluster_name"),
        ("fos_node", "node_name"),
        ("fos_event", "cluster_name"),
    ]
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql")
    assert await store.init_schema() == (1, SCHEMA_VERSION)
    await store.close()
    sent = [sql for sql, _ in server.sent]
    retyped = sent[sent.index(next(s for s in sent if "FROM sys.columns" in s)) :]
    assert "ALTER TABLE dbo.fos_lease DROP CONSTRAINT [PK__fos_leas__3213E83F0EA0C6B1]" in retyped
    assert (
        "ALTER TABLE dbo.fos_node ALTER COLUMN node_name NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL"
        in retyped
    )
    assert "ALTER TABLE dbo.fos_node ADD CONSTRAINT pk_fos_node PRIMARY KEY (cluster_name, node_name)" in retyped
    assert "CREATE INDEX fos_event_cluster_id ON dbo.fos_event (cluster_name, id)" in retyped
    for sql in retyped:
        parse_strict(sql, "tsql")
    print("\n".join(retyped))


async def test_init_db_retypes_nothing_on_a_database_created_with_nvarchar_keys(server: ScriptedServer) -> None:
    server.version = None
    store = SqlLeaseStore("Driver=stand-in", dialect="mssql")
    await store.init_schema()
    await store.close()
    assert not [
        sql for sql, _ in server.sent if "DROP CONSTRAINT" in sql or ("PRIMARY KEY (" in sql and "ALTER" in sql)
    ]
