"""init-db and preflight on real databases: the upgrade from a schema-1 database built with the statements
release 0.1 sent, refusal of triggers on fos_lease, and the agent's preflight (no DDL, just the row)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator

import pyodbc
import pytest

from lease import Control, LeaseState, SchemaMissing, SqlLeaseStore, StoreUnavailable, UnsafeSchema
from lease import schema as schema_module
from lease.dialects import DIALECTS, Dialect, qualify
from lease.schema import SCHEMA_VERSION
from tests.conftest import sqlite_dsn
from tests.support.dbservers import DbServer

_databases = itertools.count(1)
LOCAL = ["postgresql", "mysql", "sqlite"]


@pytest.fixture(params=LOCAL)
def dialect_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_dsn(dialect_name: str, request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """An empty database of its own for one test (schema changes here cannot disturb other tests)."""
    name = f"fos_t{os.getpid()}_{next(_databases)}"
    if dialect_name == "sqlite":
        yield sqlite_dsn(f"{tmp_path}/{name}.db")
        return
    server: DbServer = request.getfixturevalue("pg_server" if dialect_name == "postgresql" else "mariadb_server")
    yield server.create_database(name)


def _v1_statements_of_release_0_1(d: Dialect) -> list[str]:
    """Schema version 1 exactly as release 0.1 created it (unqualified names, default collations)."""
    ts, name = d.ts_type, "VARCHAR(64)"
    mysql_event_index = ", INDEX fos_event_cluster_id (cluster_name, id)" if d.name == "mysql" else ""
    v1 = [
        d.create_table("fos_schema", f"version INTEGER NOT NULL PRIMARY KEY, applied_at {ts} NOT NULL"),
        d.create_table(
            "fos_lease",
            f"cluster_name {name} NOT NULL PRIMARY KEY, holder_node {name} NULL, epoch BIGINT NOT NULL, "
            f"acquired_at {ts} NULL, renewed_at {ts} NULL, expires_at {ts} NULL, ttl_ms INTEGER NULL, "
            f"handover_to {name} NULL, transitions BIGINT NOT NULL",
        ),
        d.create_table(
            "fos_node",
            f"cluster_name {name} NOT NULL, node_name {name} NOT NULL, role VARCHAR(32) NOT NULL, "
            f"app_healthy {d.bool_type} NULL, url VARCHAR(512) NULL, agent_version VARCHAR(32) NULL, "
            f"last_seen {ts} NOT NULL, PRIMARY KEY (cluster_name, node_name)",
        ),
        d.create_table(
            "fos_event",
            f"{d.id_column}, cluster_name {name} NOT NULL, at {ts} NOT NULL, node_name {name} NULL, "
            f"kind VARCHAR(32) NOT NULL, epoch BIGINT NULL, detail {d.text_type} NULL{mysql_event_index}",
        ),
    ]
    if d.name != "mysql":
        v1.append("CREATE INDEX IF NOT EXISTS fos_event_cluster_id ON fos_event (cluster_name, id)")
    seconds_left = f"({d.ms_until('l.expires_at')} / 1000.0)"
    age = f"({d.ms_between('s.last_seen', d.now)} / 1000.0)"
    view = (
        "SELECT l.cluster_name, l.holder_node, l.epoch, l.acquired_at, l.renewed_at, l.expires_at, l.ttl_ms, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL THEN NULL ELSE {seconds_left} END "
        "AS seconds_left, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL OR l.expires_at <= {d.now} THEN 1 ELSE 0 END "
        "AS expired, "
        "l.handover_to, l.transitions, "
        "h.role AS holder_role, h.app_healthy AS holder_app_healthy, h.url AS holder_url, "
        "h.last_seen AS holder_last_seen, "
        f"(SELECT MIN({age}) FROM fos_node s WHERE s.cluster_name = l.cluster_name "
        "AND (l.holder_node IS NULL OR s.node_name <> l.holder_node)) AS standby_last_seen_age_s "
        "FROM fos_lease l LEFT JOIN fos_node h "
        "ON h.cluster_name = l.cluster_name AND h.node_name = l.holder_node"
    )
    v1.append(f"CREATE VIEW fos_lease_status AS {view}")
    v1.append(f"INSERT INTO fos_schema (version, applied_at) VALUES (1, {d.now})")
    v1.append(
        "INSERT INTO fos_lease (cluster_name, holder_node, epoch, acquired_at, renewed_at, expires_at, ttl_ms, "
        f"handover_to, transitions) VALUES ('old', 'm1', 5, {d.now}, {d.now}, {d.plus_ms('60000')}, 60000, NULL, 5)"
    )
    return v1


def _run(dsn: str, *sql: str) -> None:
    conn = pyodbc.connect(dsn, autocommit=True)
    try:
        for s in sql:
            conn.cursor().execute(s).close()
    finally:
        conn.close()


async def test_init_db_upgrades_a_version_1_database_and_keeps_the_lease(dialect_name: str, fresh_dsn: str) -> None:
    _run(fresh_dsn, *_v1_statements_of_release_0_1(DIALECTS[dialect_name]))
    store = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)
    with pytest.raises(SchemaMissing, match=f"version 1, this agent needs {SCHEMA_VERSION}: run `fos init-db"):
        await store.read("old")
    assert await store.init_schema() == (1, SCHEMA_VERSION)
    assert await store.init_schema() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    state = await store.read("old")
    assert (state.holder, state.epoch, state.holder_instance) == ("m1", 5, None)
    # A v1 lease has no instance: only an agent without one resumes it before the expiry.
    assert not (await store.try_acquire("old", "m1", 5000, instance="new-agent")).acquired
    row = await store.status_row("old")
    assert row is not None and row["holder"] == "m1" and row["holder_instance"] is None
    # Names that differ only in case are different after the upgrade too (MariaDB's v1 columns folded case).
    assert (await store.try_acquire("up", "M1", 5000, instance="i1")).acquired
    assert not await store.renew("up", "m1", 1, 5000)
    await store.record_node("up", "M1", "active", True, None, None, instance="i1")
    await store.record_node("up", "m1", "standby", None, None, None)
    assert [n.node for n in await store.list_nodes("up")] == ["M1", "m1"]
    await store.close()


def _trigger_sql(dialect_name: str) -> list[str]:
    if dialect_name == "postgresql":
        return [
            "CREATE FUNCTION fos_audit_fn() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
            "CREATE TRIGGER fos_audit AFTER UPDATE ON fos_lease FOR EACH ROW EXECUTE FUNCTION fos_audit_fn()",
        ]
    if dialect_name == "mysql":
        return ["CREATE TRIGGER fos_audit AFTER UPDATE ON fos_lease FOR EACH ROW SET @fos_audit = 1"]
    return ["CREATE TRIGGER fos_audit AFTER UPDATE ON fos_lease BEGIN SELECT 1; END"]


async def test_a_trigger_on_the_lease_table_is_refused_by_preflight_and_init_db(
    dialect_name: str, fresh_dsn: str
) -> None:
    store = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)
    await store.init_schema()
    await store.preflight("c1")
    _run(fresh_dsn, *_trigger_sql(dialect_name))
    with pytest.raises(UnsafeSchema, match="fos_audit") as refused:
        await store.preflight("c2")
    assert "\n" not in str(refused.value) and "drop it" in str(refused.value)
    assert not (await store.read("c2")).row_exists, "preflight changed something before refusing"
    with pytest.raises(UnsafeSchema, match="fos_audit"):
        await store.init_schema()
    await store.close()


async def test_a_disabled_trigger_is_accepted_on_postgresql(pg_server: DbServer) -> None:
    dsn = pg_server.create_database(f"fos_t{os.getpid()}_{next(_databases)}")
    store = SqlLeaseStore(dsn, call_timeout=5)
    await store.init_schema()
    _run(dsn, *_trigger_sql("postgresql"), "ALTER TABLE fos_lease DISABLE TRIGGER fos_audit")
    await store.preflight("c1")
    await store.close()


async def test_preflight_without_the_schema_says_to_run_init_db(dialect_name: str, fresh_dsn: str) -> None:
    store = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)
    with pytest.raises(SchemaMissing, match="fos init-db"):
        await store.preflight("c1")
    await store.close()


async def test_a_configured_schema_holds_every_object(pg_server: DbServer) -> None:
    dsn = pg_server.create_database(f"fos_t{os.getpid()}_{next(_databases)}")
    _run(dsn, "CREATE SCHEMA fosx")
    store = SqlLeaseStore(dsn, schema="fosx", call_timeout=5)
    await store.init_schema()
    got = await store.try_acquire("c1", "m1", 5000, expected=LeaseState.missing("c1"))
    assert got.acquired
    assert (await store.status_row("c1") or {}).get("holder") == "m1"
    await store.close()
    conn = pyodbc.connect(dsn, autocommit=True)
    try:
        rows = conn.cursor().execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE 'fos%' "
            "ORDER BY table_name"
        )
        found = {(r[0], r[1]) for r in rows.fetchall()}
    finally:
        conn.close()
    assert found == {
        ("fosx", t) for t in ("fos_event", "fos_lease", "fos_lease_status", "fos_node", "fos_outbox", "fos_schema")
    }


def v2_statements_of_release_0_2(d: Dialect, schema: str | None = None) -> list[str]:
    """Schema version 2 as release 0.2 created it (tables of versions 1 and 2, the view without the v3 columns),
    with cluster 'live' held by m1 (instance i1, epoch 7) for 60 s."""
    t = {k: qualify(k, schema) for k in ("fos_schema", "fos_lease", "fos_node", "fos_lease_status")}
    seconds_left = f"({d.ms_until('l.expires_at')} / 1000.0)"
    age = f"({d.ms_between('s.last_seen', d.now)} / 1000.0)"
    view = (
        "SELECT l.cluster_name, l.holder_node, l.epoch, l.acquired_at, l.renewed_at, l.expires_at, l.ttl_ms, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL THEN NULL ELSE {seconds_left} END "
        "AS seconds_left, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL OR l.expires_at <= {d.now} THEN 1 ELSE 0 END "
        "AS expired, "
        "l.handover_to, l.transitions, "
        "h.role AS holder_role, h.app_healthy AS holder_app_healthy, h.url AS holder_url, "
        "h.last_seen AS holder_last_seen, "
        f"(SELECT MIN({age}) FROM {t['fos_node']} s WHERE s.cluster_name = l.cluster_name "
        "AND (l.holder_node IS NULL OR s.node_name <> l.holder_node)) AS standby_last_seen_age_s, "
        "l.holder_instance "
        f"FROM {t['fos_lease']} l LEFT JOIN {t['fos_node']} h "
        "ON h.cluster_name = l.cluster_name AND h.node_name = l.holder_node"
    )
    v1 = [sql.replace(" CHARACTER SET utf8mb4", "") for sql in schema_module._v1(d, schema)]  # 0.2: default charset
    return [
        *v1,
        *schema_module._v2(d, schema),
        *d.create_view(t["fos_lease_status"], view),
        f"INSERT INTO {t['fos_schema']} (version, applied_at) VALUES (1, {d.now})",
        f"INSERT INTO {t['fos_schema']} (version, applied_at) VALUES (2, {d.now})",
        f"INSERT INTO {t['fos_lease']} (cluster_name, holder_node, epoch, acquired_at, renewed_at, expires_at, "
        f"ttl_ms, handover_to, transitions, holder_instance) VALUES ('live', 'm1', 7, {d.now}, {d.now}, "
        f"{d.plus_ms('60000')}, 60000, NULL, 7, 'i1')",
        f"INSERT INTO {t['fos_node']} (cluster_name, node_name, role, app_healthy, url, agent_version, last_seen, "
        f"instance_id) VALUES ('live', 'm1', 'active', NULL, NULL, '0.2', {d.now}, 'i1')",
    ]


async def test_init_db_upgrades_a_version_2_database_while_the_holder_keeps_renewing(
    dialect_name: str, fresh_dsn: str
) -> None:
    _run(fresh_dsn, *v2_statements_of_release_0_2(DIALECTS[dialect_name]))
    agent = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)  # the holder's store
    admin = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)  # `fos init-db`
    with pytest.raises(SchemaMissing, match=f"version 2, this agent needs {SCHEMA_VERSION}: run `fos init-db"):
        await admin.read("live")
    renewals: list[bool] = []
    upgraded = asyncio.Event()

    async def holder() -> None:  # renews with statements every release understands, as a 0.2 agent would
        while not upgraded.is_set() or len(renewals) < 3:
            renewals.append(await agent.renew("live", "m1", 7, 60_000))
            await asyncio.sleep(0.02)

    agent._schema_ok = True  # a running 0.2 agent checked the version at its start, before the upgrade
    renewing = asyncio.create_task(holder())
    try:
        assert await admin.init_schema() == (2, SCHEMA_VERSION)
    finally:
        upgraded.set()
        await renewing
    assert renewals and all(renewals), renewals  # never lost during the upgrade
    assert await admin.init_schema() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    state = await admin.read("live")
    assert (state.holder, state.epoch, state.holder_instance) == ("m1", 7, "i1") and state.held
    assert state.control == Control()  # nothing pending after the upgrade
    assert await admin.renew("live", "m1", 7, 60_000)  # renewable by the holder's epoch on the new statements
    assert not (await admin.try_acquire("live", "m2", 5000, instance="i2")).acquired
    resumed = await admin.try_acquire("live", "m1", 5000, instance="i1")  # the restarted agent resumes
    assert resumed.acquired and resumed.epoch == 8
    row = await admin.status_row("live")
    assert row is not None and row["holder"] == "m1" and row["maintenance_since"] is None
    assert row["switchover_due_in_s"] is None and row["holder_role"] == "active"
    (node,) = await admin.list_nodes("live")
    assert node.sees is None  # a 0.2 agent's row: not reported
    assert await admin.set_maintenance("live", True, "张伟😀@主机")  # any script, in the new columns and old detail
    assert (await admin.read("live")).control.maintenance_by == "张伟😀@主机"
    (event, *_) = await admin.list_events("live", limit=1)
    assert (event.kind, event.detail) == ("maintenance_on", "by 张伟😀@主机")
    await agent.close()
    await admin.close()


@pytest.mark.parametrize("dialect_name", ["postgresql", "mysql"])
async def test_init_db_waits_for_its_locks_in_short_tries_so_renewals_never_queue_behind_it(
    dialect_name: str, fresh_dsn: str
) -> None:
    # A DBA or monitoring session read the lease inside a transaction and stays idle in it: its lock blocks the
    # ALTER TABLE, and every statement queued behind a waiting ALTER waits too (the holder's renewals).
    _run(fresh_dsn, *v2_statements_of_release_0_2(DIALECTS[dialect_name]))
    reader = pyodbc.connect(fresh_dsn, autocommit=False)
    agent = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)
    admin = SqlLeaseStore(fresh_dsn, dialect=dialect_name, call_timeout=5)
    agent._schema_ok = True  # a running 0.2 agent checked the version at its start
    try:
        reader.cursor().execute("SELECT * FROM fos_lease").fetchall()
        init = asyncio.create_task(admin.init_schema(timeout=30.0))
        waits: list[float] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while loop.time() < end:
            started = loop.time()
            assert await agent.renew("live", "m1", 7, 60_000)
            waits.append(loop.time() - started)
            await asyncio.sleep(0.05)
        assert not init.done()  # still waiting for the reader, in short tries
        reader.rollback()
        assert await asyncio.wait_for(init, 30) == (2, SCHEMA_VERSION)
        assert max(waits) < 0.6, sorted(waits)[-5:]  # never queued behind the ALTER for long
        assert (await admin.read("live")).held_by("m1")
    finally:
        reader.close()
        await agent.close()
        await admin.close()


async def test_init_db_gives_up_at_its_deadline_naming_the_lock(pg_server: DbServer) -> None:
    dsn = pg_server.create_database(f"fos_t{os.getpid()}_{next(_databases)}")
    _run(dsn, *v2_statements_of_release_0_2(DIALECTS["postgresql"]))
    reader = pyodbc.connect(dsn, autocommit=False)
    admin = SqlLeaseStore(dsn, dialect="postgresql", call_timeout=5)
    try:
        reader.cursor().execute("SELECT * FROM fos_lease").fetchall()
        with pytest.raises(StoreUnavailable, match=r"could not lock .* within 2 s: another session"):
            await admin.init_schema(timeout=2.0)
    finally:
        reader.close()
        await admin.close()


async def test_init_db_hands_its_connection_back_with_the_stores_lock_waits(pg_server: DbServer) -> None:
    dsn = pg_server.create_database(f"fos_t{os.getpid()}_{next(_databases)}")
    admin = SqlLeaseStore(dsn, dialect="postgresql", call_timeout=5)
    try:
        await admin.init_schema()
        _, rows = await admin._call(lambda conn: conn.execute("SHOW lock_timeout"), None)
        assert rows == [("5s",)]  # the session's guard again, not init-db's 200 ms
    finally:
        await admin.close()
