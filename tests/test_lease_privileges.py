"""Least privilege, with the exact set-up SQL of docs/database-setup.md: an owner login runs init-db, an agent
login with only SELECT/INSERT/UPDATE on the tables and SELECT on the view runs every store operation the agent
and the operator commands use, sends no DDL, and is refused DDL by the server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyodbc
import pytest

import lease.odbc
from lease import EventKind, LeaseState, SqlLeaseStore, UnsafeSchema
from lease.dialects import DIALECTS
from lease.schema import SCHEMA_VERSION
from tests.support.dbservers import DbServer
from tests.test_lease_schema import v2_statements_of_release_0_2

_runs = itertools.count(1)
_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|GRANT|TRUNCATE)\b", re.IGNORECASE)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "database-setup.md")


def _doc_blocks(section: str) -> list[str]:
    """The ```sql blocks of one section of docs/database-setup.md: the test runs what the document says."""
    with open(DOC) as f:
        text = f.read()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", body, re.DOTALL)


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> DbServer:
    found: DbServer = request.getfixturevalue("pg_server" if request.param == "postgresql" else "mariadb_server")
    return found


def _personalise(sql: str, n: int) -> str:
    """The documented names, made unique per run so tests can share one server."""
    return (
        sql.replace("fos_owner", f"fos_owner{n}")
        .replace("fos_agent", f"fos_agent{n}")
        .replace("DATABASE fos", f"DATABASE fos_p{n}")
        .replace("\\c fos", f"\\c fos_p{n}")
        .replace(" fos.", f" fos_p{n}.")
    )


@pytest.fixture
def logins(server: DbServer) -> Iterator[dict[str, str]]:
    n = next(_runs) + 100 * (os.getpid() % 1000)
    section = "PostgreSQL (15 and later)" if server.kind == "postgresql" else "MariaDB / MySQL"
    setup, grants = (_personalise(b, n) for b in _doc_blocks(section))
    if server.kind == "postgresql":
        # Schema-qualified names stay `fos.` on PostgreSQL: the schema is called fos in every database.
        setup = setup.replace(f"fos_p{n}.", "fos.")
        grants = grants.replace(f"fos_p{n}.", "fos.")
        server.admin_sql(setup, database="postgres")
    else:
        server.admin_sql(setup, database="mysql")
    database = f"fos_p{n}"
    extra = {"Uid": f"fos_owner{n}"}
    owner = server.dsn(password="owner-secret", database=database, **extra)
    agent = server.dsn(password="agent-secret", database=database, Uid=f"fos_agent{n}")
    yield {"owner": owner, "agent": agent, "grants": grants, "database": database}


async def test_the_agent_login_with_the_documented_grants_runs_everything_and_no_ddl(
    server: DbServer, logins: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = "fos" if server.kind == "postgresql" else None
    owner = SqlLeaseStore(logins["owner"], schema=schema, call_timeout=10)
    assert (await owner.init_schema())[1] == SCHEMA_VERSION
    await owner.close()
    server.admin_sql(logins["grants"], database=logins["database"] if server.kind == "postgresql" else "mysql")

    sent: list[str] = []
    real = lease.odbc._execute

    def recording(worker: Any, sql: str, params: tuple[Any, ...]) -> Any:
        sent.append(sql)
        return real(worker, sql, params)

    monkeypatch.setattr(lease.odbc, "_execute", recording)
    agent = SqlLeaseStore(logins["agent"], schema=schema, call_timeout=5)
    await agent.preflight("c1")
    state = await agent.read("c1")
    assert state.row_exists
    got = await agent.try_acquire("c1", "m1", 5000, expected=state, instance="i1")
    assert got.acquired
    assert await agent.renew("c1", "m1", got.epoch, 5000)
    assert await agent.release("c1", "m1", got.epoch, detail="graceful stop")
    assert (await agent.try_acquire("c2", "m1", 5000, expected=LeaseState.missing("c2"))).acquired
    await agent.record_node("c1", "m1", "standby", None, None, "0.1", instance="i1")
    await agent.record_node("c1", "m1", "active", True, "http://m1", "0.1", instance="i1")
    await agent.record_event("c1", "m1", "note", None, "hello")
    assert len(await agent.list_events("c1")) == 3
    assert [n.node for n in await agent.list_nodes("c1")] == ["m1"]
    row = await agent.status_row("c1")
    assert row is not None and row["holder"] is None
    await _every_control_operation(agent)
    await agent.close()
    assert sent and not [s for s in sent if _DDL.match(s)], "the agent sent DDL"

    conn = pyodbc.connect(logins["agent"], autocommit=True)
    try:
        table = "fos.fos_event" if schema else "fos_event"
        for ddl in (f"CREATE TABLE {table}_x (x INTEGER)", f"DROP TABLE {table}", f"ALTER TABLE {table} ADD y INTEGER"):
            with pytest.raises(pyodbc.Error, match=r"(?i)denied|must be owner"):
                conn.cursor().execute(ddl)
    finally:
        conn.close()


async def _every_control_operation(agent: SqlLeaseStore) -> None:
    """What the operator commands and the agent's control paths send (schema v3), with the agent login."""
    await agent.record_node("c1", "m1", "active", True, None, "0.3", instance="i1", sees="maintenance")
    assert (await agent.list_nodes("c1"))[0].sees == "maintenance"
    assert await agent.request_switchover("c1", "m2", 0, "op@h")
    assert await agent.cancel_switchover("c1", "op@h")
    got = await agent.try_acquire("c1", "m1", 5000, instance="i1")
    assert await agent.request_switchover("c1", "m2", 0, "op@h")
    request = (await agent.read("c1")).control.switchover
    assert request is not None and request.id is not None
    assert not await agent.cancel_switchover("c1", "m1", kind=EventKind.SWITCHOVER_FAILED, request_id=request.id + 1)
    assert got.acquired and await agent.handover("c1", "m1", got.epoch, "m2", 5000, request_id=request.id)
    assert (await agent.try_acquire("c1", "m2", 5000, instance="i2")).acquired  # the target takes it
    assert await agent.set_maintenance("c1", True, "op@h") and await agent.set_maintenance("c1", False, "op@h")
    assert await agent.set_failover_off("c1", "m2", "flapping")
    assert await agent.set_disabled("c1", True, "op@h") and await agent.set_disabled("c1", False, "op@h")
    assert await agent.count_events("c1", [EventKind.HANDOVER], 60_000) == 1
    assert len(await agent.list_events("c1", since_ms=60_000, limit=100)) >= 8
    row = await agent.status_row("c1")
    assert row is not None and row["disabled_since"] is None and row["failover_off_for_s"] is None


async def test_an_upgrade_from_version_2_keeps_the_agent_logins_grants(
    server: DbServer, logins: dict[str, str]
) -> None:
    """`fos init-db` re-creates the view with new columns at its end: PostgreSQL's OR REPLACE and MariaDB keep
    the grant on it, and the table grants cover the new columns."""
    schema = "fos" if server.kind == "postgresql" else None
    d = DIALECTS[server.kind]
    conn = pyodbc.connect(logins["owner"], autocommit=True)
    try:
        for sql in v2_statements_of_release_0_2(d, schema):
            conn.cursor().execute(sql).close()
    finally:
        conn.close()
    server.admin_sql(logins["grants"], database=logins["database"] if server.kind == "postgresql" else "mysql")
    owner = SqlLeaseStore(logins["owner"], schema=schema, call_timeout=10)
    assert await owner.init_schema() == (2, SCHEMA_VERSION)
    await owner.close()
    agent = SqlLeaseStore(logins["agent"], schema=schema, call_timeout=5)
    assert await agent.renew("live", "m1", 7, 60_000)
    assert await agent.set_maintenance("live", True, "op@h")
    row = await agent.status_row("live")
    assert row is not None and row["holder"] == "m1" and row["maintenance_by"] == "op@h"
    await _every_control_operation(agent)
    await agent.close()


async def test_the_agent_login_sees_and_refuses_a_trigger_the_owner_did_not_create(
    server: DbServer, logins: dict[str, str]
) -> None:
    schema = "fos" if server.kind == "postgresql" else None
    owner = SqlLeaseStore(logins["owner"], schema=schema, call_timeout=10)
    await owner.init_schema()
    await owner.close()
    server.admin_sql(logins["grants"], database=logins["database"] if server.kind == "postgresql" else "mysql")
    if server.kind == "postgresql":
        trigger = (
            "CREATE FUNCTION fos.audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';\n"
            "CREATE TRIGGER fos_audit AFTER UPDATE ON fos.fos_lease FOR EACH ROW EXECUTE FUNCTION fos.audit();"
        )
    else:
        trigger = "CREATE TRIGGER fos_audit AFTER UPDATE ON fos_lease FOR EACH ROW SET @fos_audit = 1;"
    server.admin_sql(trigger, database=logins["database"])
    agent = SqlLeaseStore(logins["agent"], schema=schema, call_timeout=5)
    with pytest.raises(UnsafeSchema, match="fos_audit"):
        await agent.preflight("c1")
    await agent.close()


def _fos(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


async def _init_db(dsn: str, schema: str | None) -> None:
    owner = SqlLeaseStore(dsn, schema=schema, call_timeout=10)
    try:
        await owner.init_schema()
    finally:
        await owner.close()


def test_fos_run_and_fos_status_work_with_only_the_agent_logins_grants(
    server: DbServer, logins: dict[str, str], tmp_path: Path
) -> None:
    schema = "fos" if server.kind == "postgresql" else None
    asyncio.run(_init_db(logins["owner"], schema))
    server.admin_sql(logins["grants"], database=logins["database"] if server.kind == "postgresql" else "mysql")
    # The password comes from the environment, as in production; the cluster's row does not exist yet: `fos run`
    # creates it with the INSERT it is granted.
    dsn = logins["agent"].replace("agent-secret", "${FOS_DB_PASSWORD}")
    config = tmp_path / "fos.toml"
    config.write_text(
        f"""
[cluster]
name = "least-{os.getpid()}"
address_driver = "none"

[[nodes]]
name = "m1"

[database]
dsn = "{dsn}"
{f'schema = "{schema}"' if schema else ""}

[lease]
ttl = 4
heartbeat = 1

[http]
listen = ""
"""
    )
    env = {**os.environ, "FOS_DB_PASSWORD": "agent-secret"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config), "--node", "m1", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        holder = None
        while holder != "m1" and time.monotonic() < deadline and agent.poll() is None:
            out = _fos("status", "--config", str(config), "--json", env=env)
            assert out.returncode == 0, out.stderr
            holder = (json.loads(out.stdout)["lease"] or {}).get("holder")
            if holder != "m1":
                time.sleep(0.2)  # the poll interval of a wait with a deadline
        assert holder == "m1", f"the agent did not take the lease with the agent login: {agent.stderr}"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        err = agent.stderr.read() if agent.stderr else ""
        assert "permission denied" not in err.lower() and "denied" not in err.lower(), err
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
