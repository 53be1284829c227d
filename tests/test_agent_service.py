"""`fos run`'s wiring: each configured value reaches the part that acts on it, and start-up refusals that depend
on the database (a live agent with our name, a store that misreports row counts) stop with one line and exit 2."""

from __future__ import annotations

import dataclasses
import pwd
from pathlib import Path
from typing import Any

import pytest

from agent.app import StartStopCommands, SupervisedCommand
from agent.config import Config, ReplicationConfig, parse
from agent.http import status
from agent.roles import Role
from agent.runner import AgentFailed
from agent.service import Replication, build_app, build_binder
from agent.statedir import StateDir
from agent.stores import open_store
from lease import ProtocolViolation, SqlLeaseStore
from lease.memory import MemoryLeaseStore
from netops import NetlinkBinder
from tests.support.agents import Node, boottime, config, until


def cluster_file(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "cluster": {"name": "c1", "common_ip": "10.0.0.100/24"},
        "nodes": [{"name": "m1", "interface": "eth0"}],
        "database": {"dsn": "Driver=SQLite3;Database=/tmp/x.db"},
        "lease": {"ttl": 30, "heartbeat": 5},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse(data)


def test_cluster_probe_timeout_reaches_the_binder() -> None:
    cfg = cluster_file(cluster={"name": "c1", "common_ip": "10.0.0.100/24", "probe_timeout": 0.35})
    binder = build_binder(cfg, cfg.nodes[0])
    assert isinstance(binder, NetlinkBinder) and binder.probe_timeout == 0.35
    default = build_binder(cluster_file(), cfg.nodes[0])
    assert isinstance(default, NetlinkBinder) and default.probe_timeout == 0.2


def test_announce_settings_reach_the_binder() -> None:
    cfg = cluster_file(announce={"count": 5, "interval": 0.3})
    binder = build_binder(cfg, cfg.nodes[0])
    assert isinstance(binder, NetlinkBinder)
    assert (binder._announce.count, binder._announce.interval) == (5, 0.3)


def test_database_schema_reaches_the_store() -> None:
    store = open_store(cluster_file(database={"schema": "ops"}))
    assert store.schema == "ops"


def test_application_user_and_command_reach_the_supervisor(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    cfg = cluster_file(application={"command": "sleep 1", "user": "nobody", "stop_timeout": 4})
    with StateDir(str(tmp_path), "c1", "m1") as state:
        app = build_app(cfg, cfg.nodes[0], state)
    assert isinstance(app, SupervisedCommand)
    assert app.creds is not None and app.creds.uid == nobody.pw_uid
    assert app.stop_timeout == 4 and app.pidfile == str(tmp_path / "c1-m1.pid")


def test_start_stop_commands_get_their_timeouts(tmp_path: Path) -> None:
    cfg = cluster_file(application={"start": "true", "stop": "true", "stop_timeout": 7, "health": {"start_grace": 9}})
    with StateDir(str(tmp_path), "c1", "m1") as state:
        app = build_app(cfg, cfg.nodes[0], state)
    assert isinstance(app, StartStopCommands)
    assert (app.stop_timeout, app.start_timeout) == (7, 9)


class _NoCountStore(MemoryLeaseStore):
    """A database that reports no row counts (SQL Server with SET NOCOUNT ON for the fos login)."""

    async def try_acquire(self, *args: Any, **kwargs: Any) -> Any:
        raise ProtocolViolation("the lease UPDATE reported -1 rows: turn SET NOCOUNT off for the fos login")


async def test_a_database_that_misreports_row_counts_stops_the_agent_instead_of_retrying() -> None:
    store = _NoCountStore(clock=boottime)
    m1 = Node(config(), "m1", store).start()
    assert m1.task is not None
    with pytest.raises(AgentFailed) as failed:
        await m1.task
    assert isinstance(failed.value.__cause__, ProtocolViolation)
    assert store.calls <= 2, "a protocol violation must not be retried"


async def test_an_agent_records_its_instance_in_its_node_row() -> None:
    store = MemoryLeaseStore(clock=boottime)
    m1 = Node(config(), "m1", store, instance="host-a:1234abcd:deadbeef").start()
    await until(lambda: m1.agent.role is Role.ACTIVE)
    await until(lambda: ("c1", "m1") in store.nodes and store.nodes[("c1", "m1")].instance is not None)
    assert store.nodes[("c1", "m1")].instance == "host-a:1234abcd:deadbeef"
    assert store.rows["c1"].instance == "host-a:1234abcd:deadbeef"
    await m1.kill()


async def test_a_configured_replication_schedule_runs_beside_the_agent_and_reports_the_copy(tmp_path: Path) -> None:
    db = tmp_path / "lease.db"
    owner = SqlLeaseStore(f"Driver=SQLite3;Database={db};Timeout=2000")
    await owner.init_schema()
    await owner.close()
    base = config()
    cfg = dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, dsn=f"Driver=SQLite3;Database={db};Timeout=2000"),
        replication=ReplicationConfig(paths=(str(tmp_path / "install"),), stale_after=1.0),
    )
    m1 = Node(cfg, "m1", MemoryLeaseStore(clock=boottime))
    replication = Replication.start(cfg, cfg.nodes[0], m1.agent)
    try:
        m1.start()
        await until(lambda: m1.agent.role is Role.ACTIVE)
        await until(lambda: status(m1.agent)["replication"] is not None, 5, "the copy's age in /status")
        assert status(m1.agent)["replication"] == {"node": "m1", "at": None, "epoch": None, "age_s": None}
        check = SqlLeaseStore(f"Driver=SQLite3;Database={db};Timeout=2000")
        events = await check.list_events(cfg.cluster)
        await check.close()
        assert [e.kind for e in events] == ["replication_stale"], "no good copy on record is stale"
    finally:
        await replication.stop()
        await m1.kill()
