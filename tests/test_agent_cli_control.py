"""The operations commands against a real database (SQLite through its ODBC driver): every refusal with its own
message and exit code, what each command writes, `--wait` against simulated agents (the command runs as a real
process), `fos history` and the status lines. The pure rules (target choice, --at) are table-tested at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pyodbc
import pytest

from agent.cli import main
from agent.cli_control import acknowledged, best_target, operator, parse_at, target_refusal
from agent.config import parse
from lease import EventKind, LeaseState, NodeRecord, SqlLeaseStore
from tests.conftest import sqlite_dsn

HOST = socket.gethostname()
ME = f"alice@{HOST}"
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass
class Ops:
    """A cluster `ops` of nodes m1..m3 on its own SQLite database, with the config the commands read."""

    config: Path
    dsn: str
    capsys: pytest.CaptureFixture[str]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fos(self, *args: str) -> tuple[int, str, str]:
        """Run `fos ARGS --config FILE` in this process; (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        try:
            code = main([*args, "--config", str(self.config)])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def db(self, fn: Callable[[SqlLeaseStore], Awaitable[T]]) -> T:
        async def run() -> T:
            store = SqlLeaseStore(self.dsn, call_timeout=5)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def sql(self, statement: str) -> None:
        conn = pyodbc.connect(self.dsn, autocommit=True)
        try:
            conn.cursor().execute(statement).close()
        finally:
            conn.close()


def write_config(path: Path, dsn: str, heartbeat: float = 1.0, priorities: tuple[int, ...] = (0, 0, 0)) -> Path:
    nodes = "".join(f'[[nodes]]\nname = "m{i + 1}"\npriority = {p}\n' for i, p in enumerate(priorities))
    path.write_text(
        f'[cluster]\nname = "ops"\naddress_driver = "none"\n{nodes}'
        f'[database]\ndsn = "{dsn}"\n[lease]\nttl = 2\nheartbeat = {heartbeat}\n'
        "[application.health]\nstart_grace = 1\n"
    )
    return path


@pytest.fixture
def ops(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Ops:
    dsn = sqlite_dsn(str(tmp_path / "ops.db"))
    monkeypatch.setenv("SUDO_USER", "alice")
    cluster = Ops(write_config(tmp_path / "fos.toml", dsn), dsn, capsys)
    assert cluster.fos("init-db")[0] == 0
    return cluster


async def _holds(store: SqlLeaseStore, node: str = "m1") -> int:
    got = await store.try_acquire("ops", node, 60_000, instance=f"i-{node}")
    assert got.acquired
    await store.record_node("ops", node, "active", True, None, "0.3", instance=f"i-{node}", sees="")
    return got.epoch


async def _standby(store: SqlLeaseStore, node: str, role: str = "standby", healthy: bool | None = None) -> None:
    await store.record_node("ops", node, role, healthy, None, "0.3", instance=f"i-{node}", sees="")


def _setup(*steps: Callable[[SqlLeaseStore], Awaitable[Any]]) -> Callable[[SqlLeaseStore], Awaitable[None]]:
    async def run(store: SqlLeaseStore) -> None:
        for step in steps:
            await step(store)

    return run


REFUSALS: dict[str, tuple[Callable[[SqlLeaseStore], Awaitable[None]], list[str], str]] = {
    "nobody holds": (_setup(lambda s: _standby(s, "m2")), ["--to", "m2"], "no node holds the lease"),
    "target holds": (_setup(lambda s: _holds(s, "m2")), ["--to", "m2"], "m2 already holds the lease (epoch 1)"),
    "target never reported": (_setup(_holds), ["--to", "m2"], "m2 has never reported to the database"),
    "target stopped": (
        _setup(_holds, lambda s: _standby(s, "m2", "stopped")),
        ["--to", "m2"],
        "m2 was not seen alive recently (its agent stopped)",
    ),
    "target in hold-off": (
        _setup(_holds, lambda s: _standby(s, "m2", "hold_off")),
        ["--to", "m2"],
        "m2 is in hold-off after stepping down",
    ),
    "target unhealthy": (
        _setup(_holds, lambda s: _standby(s, "m2", healthy=False)),
        ["--to", "m2"],
        "m2 reports its application unhealthy",
    ),
    "maintenance on": (
        _setup(_holds, lambda s: _standby(s, "m2"), lambda s: s.set_maintenance("ops", True, "bob@h")),
        ["--to", "m2"],
        "maintenance mode is on (by bob@h, 0 s ago): run `fos maintenance off` first",
    ),
    "cluster disabled": (
        _setup(_holds, lambda s: _standby(s, "m2"), lambda s: s.set_disabled("ops", True, "bob@h")),
        ["--to", "m2"],
        "the cluster is disabled (by bob@h, 0 s ago): run `fos enable` first",
    ),
    "another pending": (
        _setup(_holds, lambda s: _standby(s, "m2"), lambda s: s.request_switchover("ops", "m3", 60_000, "bob@h")),
        ["--to", "m2"],
        "another switchover is pending (to m3, due in 60 s, by bob@h): wait for it, or `fos switchover --cancel`",
    ),
    "failover off": (
        _setup(_holds, lambda s: _standby(s, "m2"), lambda s: s.set_failover_off("ops", "m1", "4 take-overs")),
        ["--to", "m2"],
        "automatic failover is off (4 take-overs): run `fos enable` first",
    ),
    "no other node alive": (
        _setup(_holds, lambda s: _standby(s, "m2", "stopped")),
        [],
        "no other node is alive and healthy to take over from m1",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_switchover_refusal_has_its_own_message_exit_1_and_writes_nothing(ops: Ops, case: str) -> None:
    setup, args, message = REFUSALS[case]
    ops.db(setup)
    before = ops.db(lambda s: s.list_events("ops", limit=100))
    code, out, err = ops.fos("switchover", *args)
    assert (code, out) == (1, "")
    assert err.startswith("fos switchover: not done: ") and message in err and err.count("\n") == 1, err
    assert ops.db(lambda s: s.list_events("ops", limit=100)) == before


async def _old_agent(store: SqlLeaseStore, node: str = "m3") -> None:
    """A live node row written by an agent of the previous release: it reports no `sees` (NULL)."""
    await store.record_node("ops", node, "standby", None, None, "0.2", instance=f"i-{node}")


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["maintenance", "on"], "maintenance mode"),
        (["disable"], "disabling"),
        (["switchover", "--to", "m2"], "switchover requests"),
    ],
)
def test_a_command_an_older_agent_would_ignore_is_refused_naming_it_and_writes_nothing(
    ops: Ops, command: list[str], what: str
) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2"), _old_agent))
    before = ops.db(lambda s: s.list_events("ops", limit=100))
    code, out, err = ops.fos(*command)
    assert (code, out) == (1, ""), err
    assert err == (
        f"fos {command[0]}: not done: m3 runs an agent older than schema 3 (its node row reports no `sees`), "
        f"which ignores {what}: upgrade the agent on m3 first (it runs on the upgraded database), then retry\n"
    )
    assert ops.db(lambda s: s.list_events("ops", limit=100)) == before
    control = ops.db(lambda s: s.read("ops")).control
    assert not control.maintenance and not control.disabled and control.switchover is None


def test_an_older_agent_that_is_down_does_not_block_the_commands(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2"), _old_agent))
    ops.sql(
        "UPDATE fos_node SET last_seen = strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 seconds') WHERE node_name = 'm3'"
    )
    assert ops.fos("maintenance", "on")[0] == 0
    assert ops.fos("maintenance", "off")[0] == 0  # never refused: it only lets agents act again
    assert ops.fos("switchover", "--to", "m2")[0] == 0
    assert ops.fos("disable")[0] == 0


def test_a_target_whose_row_is_older_than_three_heartbeats_is_refused(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2")))
    ops.sql(
        "UPDATE fos_node SET last_seen = strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 seconds') WHERE node_name = 'm2'"
    )
    code, _, err = ops.fos("switchover", "--to", "m2")
    assert code == 1 and "m2 was not seen alive recently (last seen 10 s ago)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["switchover", "--to", "m9"], "fos switchover: --to 'm9' is not a node of cluster ops: use one of m1, m2, m3"),
        (["switchover", "--cancel", "--to", "m2"], "fos switchover: --cancel takes no --to, --at or --wait"),
        (["switchover", "--at", "2026-11-26T03:00:00"], "argument --at: '2026-11-26T03:00:00' has no UTC offset"),
        (["switchover", "--at", "2001-01-01T00:00:00+00:00"], "is in the past"),
        (["switchover", "--at", "tomorrow"], "is not an ISO 8601 time: write it like 2026-11-26T03:00:00+01:00"),
        (["maintenance", "maybe"], "argument state: invalid choice: 'maybe'"),
        (["history", "--since", "yesterday"], "argument --since: 'yesterday' is neither a duration nor a time"),
        (["history", "--limit", "0"], "argument --limit: '0' is not a number of events from 1 to 100000"),
        (["history", "--since", "5000d"], "argument --since: '5000d' is more than 10 years back: give at most 3652d"),
    ],
)
def test_bad_usage_is_one_line_exit_2_and_changes_nothing(ops: Ops, args: list[str], message: str) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2")))
    before = ops.db(lambda s: s.list_events("ops", limit=100))
    code, out, err = ops.fos(*args)
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1, err
    assert ops.db(lambda s: s.list_events("ops", limit=100)) == before


def test_at_more_than_a_week_ahead_is_refused() -> None:
    with pytest.raises(Exception, match="more than 7 days ahead"):
        parse_at((datetime.now(UTC) + timedelta(days=8)).isoformat())


def test_a_switchover_is_requested_shown_and_cancelled(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2")))
    code, out, _ = ops.fos("switchover", "--to", "m2")
    assert (code, out) == (0, f"switchover from m1 to m2 requested now by {ME} (epoch 1)\n")
    pending = ops.db(lambda s: s.read("ops")).control.switchover
    assert pending is not None and (pending.to, pending.by) == ("m2", ME) and pending.due
    code, out, _ = ops.fos("status")
    assert code == 0 and f"SWITCHOVER pending: to m2, due now, by {ME}" in out
    assert ops.fos("switchover", "--cancel")[:2] == (0, f"pending switchover cancelled by {ME}\n")
    assert ops.db(lambda s: s.read("ops")).control.switchover is None
    code, _, err = ops.fos("switchover", "--cancel")
    assert code == 1 and err == "fos switchover: not done: no switchover is pending: nothing to cancel\n"
    kinds = [e.kind for e in ops.db(lambda s: s.list_events("ops", limit=3))]
    assert kinds == ["switchover_cancelled", "switchover_requested", "acquired"]


def test_without_to_the_highest_priority_healthy_node_is_chosen(ops: Ops, tmp_path: Path) -> None:
    ops.config = write_config(tmp_path / "prio.toml", ops.dsn, priorities=(0, 10, 50))
    ops.db(_setup(_holds, lambda s: _standby(s, "m2"), lambda s: _standby(s, "m3", healthy=False)))
    code, out, _ = ops.fos("switchover")
    assert code == 0 and "to m2 requested" in out  # m3 is preferred but unhealthy
    ops.fos("switchover", "--cancel")
    ops.db(lambda s: _standby(s, "m3"))
    code, out, _ = ops.fos("switchover")
    assert code == 0 and "from m1 to m3 requested" in out


def test_at_schedules_the_switchover_on_the_database(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2")))
    at = (datetime.now(UTC) + timedelta(minutes=1)).replace(microsecond=0)
    code, out, _ = ops.fos("switchover", "--to", "m2", "--at", at.isoformat())
    assert code == 0 and f"requested at {at.isoformat()}" in out
    pending = ops.db(lambda s: s.read("ops")).control.switchover
    assert pending is not None and 50_000 < pending.due_in_ms <= 60_000
    assert "schedule (by" not in ops.fos("history")[1]  # not yet a transition: nothing happened


def test_the_operator_is_the_sudo_user_else_the_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    assert operator() == f"alice@{HOST}"
    monkeypatch.delenv("SUDO_USER")
    monkeypatch.setenv("LOGNAME", "bob")
    assert operator() == f"bob@{HOST}"


# ---- --wait against simulated agents (the command is a real process) ----------------------------------------


@dataclass
class Node:
    role: str = "standby"
    healthy: bool | None = None
    sees: str | None = ""


@contextlib.asynccontextmanager
async def agents(
    dsn: str, nodes: dict[str, Node], act: Callable[[SqlLeaseStore], Awaitable[None]]
) -> AsyncIterator[None]:
    """Node rows refreshed every 50 ms from `nodes`, and `act` called on each round (the holder's and the
    target's part of the protocol), until the block ends."""
    store = SqlLeaseStore(dsn, call_timeout=5)

    async def loop() -> None:
        while True:
            for name, n in nodes.items():
                await store.record_node("ops", name, n.role, n.healthy, None, "0.3", instance=f"i-{name}", sees=n.sees)
            await act(store)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        await asyncio.sleep(0.1)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def fos_process(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        "--config",
        str(config),
        cwd=ROOT,
        env={**os.environ, "SUDO_USER": "alice"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _init(dsn: str) -> SqlLeaseStore:
    store = SqlLeaseStore(dsn, call_timeout=5)
    await store.init_schema()
    return store


@pytest.fixture
def wait_cluster(tmp_path: Path) -> tuple[Path, str]:
    dsn = sqlite_dsn(str(tmp_path / "wait.db"))
    return write_config(tmp_path / "fos.toml", dsn), dsn


async def test_switchover_wait_returns_when_the_target_serves(wait_cluster: tuple[Path, str]) -> None:
    config, dsn = wait_cluster
    store = await _init(dsn)
    epoch = (await store.try_acquire("ops", "m1", 60_000, instance="i-m1")).epoch
    nodes = {"m1": Node("active", True), "m2": Node()}
    times: dict[str, float] = {}

    async def act(s: SqlLeaseStore) -> None:
        state = await s.read("ops")
        if state.held_by("m1") and state.control.switchover is not None:
            nodes["m1"] = Node()
            assert await s.handover("ops", "m1", epoch, "m2", 2000)
        elif state.reserved_for == "m2":
            assert (await s.try_acquire("ops", "m2", 2000, expected=state, instance="i-m2")).acquired
            nodes["m2"] = Node("promoting", None)
            times["acquired"] = time.monotonic()
        elif nodes["m2"].role == "promoting" and time.monotonic() - times["acquired"] > 0.5:
            nodes["m2"] = Node("active", True)  # the IP is bound and the application healthy
            times["active"] = time.monotonic()

    async with agents(dsn, nodes, act):
        code, out, err = await fos_process(config, "switchover", "--to", "m2", "--wait")
        times["returned"] = time.monotonic()
    assert code == 0, err
    assert times["returned"] > times["active"]  # it waited for the target to serve, not just to hold the lease
    lines = out.splitlines()
    assert lines[0] == f"switchover from m1 to m2 requested now by {ME} (epoch 1)"
    assert lines[1].startswith("m2 serves (epoch 2) ") and lines[1].endswith(" s after the request")
    await store.close()


async def test_switchover_wait_reports_a_switchover_the_holder_refused(wait_cluster: tuple[Path, str]) -> None:
    config, dsn = wait_cluster
    store = await _init(dsn)
    await store.try_acquire("ops", "m1", 60_000, instance="i-m1")

    async def act(s: SqlLeaseStore) -> None:
        await s.renew("ops", "m1", 1, 60_000)
        if (await s.read("ops")).control.switchover is not None:
            await s.cancel_switchover("ops", "m1", kind=EventKind.SWITCHOVER_FAILED, detail="m2 vanished")

    async with agents(dsn, {"m1": Node("active", True), "m2": Node()}, act):
        code, _, err = await fos_process(config, "switchover", "--to", "m2", "--wait")
    assert code == 1
    assert "fos switchover: failed: switchover failed (m2 vanished, by m1); m1 holds (epoch 1)" in err
    await store.close()


async def test_switchover_wait_fails_when_the_old_holder_takes_the_lease_back(wait_cluster: tuple[Path, str]) -> None:
    config, dsn = wait_cluster
    store = await _init(dsn)
    epoch = (await store.try_acquire("ops", "m1", 60_000, instance="i-m1")).epoch

    async def act(s: SqlLeaseStore) -> None:  # the target died after the handover: m1 re-acquires at the end
        state = await s.read("ops")
        if state.held_by("m1") and state.control.switchover is not None:
            await s.handover("ops", "m1", epoch, "m2", 300)
        elif not state.held:
            await s.try_acquire("ops", "m1", 60_000, expected=state, instance="i-m1")

    async with agents(dsn, {"m1": Node("active", True), "m2": Node()}, act):
        code, _, err = await fos_process(config, "switchover", "--to", "m2", "--wait")
    assert code == 1 and "fos switchover: failed: the target did not take over; m1 holds (epoch 2)" in err
    await store.close()


async def test_maintenance_wait_returns_when_every_live_agent_acknowledged(wait_cluster: tuple[Path, str]) -> None:
    config, dsn = wait_cluster
    store = await _init(dsn)
    assert (await store.try_acquire("ops", "m1", 60_000, instance="i-m1")).acquired
    await store.record_node("ops", "m3", "stopped", None, None, "0.3", sees="")
    nodes = {"m1": Node("active", True), "m2": Node()}

    async def act(s: SqlLeaseStore) -> None:
        sees = (await s.read("ops")).control.sees()
        for n in nodes.values():
            n.sees = sees

    async with agents(dsn, nodes, act):
        code, out, err = await fos_process(config, "maintenance", "on", "--wait")
        assert code == 0, err
        assert out.splitlines()[0].startswith(f"maintenance mode on (by {ME})")
        assert out.splitlines()[1].startswith("acknowledged by m1, m2 after ")
        assert out.splitlines()[1].endswith("; not running: m3 (they see it when they start)")
        code, out, err = await fos_process(config, "maintenance", "off", "--wait")
        assert code == 0 and "acknowledged by m1, m2" in out, err
    await store.close()


async def test_maintenance_wait_names_the_agent_that_did_not_acknowledge(tmp_path: Path) -> None:
    dsn = sqlite_dsn(str(tmp_path / "ack.db"))
    config = write_config(tmp_path / "fos.toml", dsn, heartbeat=0.5)
    store = await _init(dsn)
    assert (await store.try_acquire("ops", "m1", 60_000, instance="i-m1")).acquired
    nodes = {"m1": Node("active", True, "maintenance"), "m2": Node(sees="")}  # m2: stuck, never acts on it
    async with agents(dsn, nodes, lambda s: asyncio.sleep(0)):
        started = time.monotonic()
        code, _, err = await fos_process(config, "maintenance", "on", "--wait")
    assert code == 1 and "fos maintenance: not acknowledged within 2 s: no acknowledgement from m2" in err
    assert time.monotonic() - started < 20
    await store.close()


# ---- maintenance, disable, enable -------------------------------------------------------------------------------


def test_maintenance_on_and_off_are_written_and_repeatable(ops: Ops) -> None:
    ops.db(_holds)
    code, out, _ = ops.fos("maintenance", "on")
    assert code == 0 and out.startswith(f"maintenance mode on (by {ME}): nobody fails over")
    code, out, _ = ops.fos("maintenance", "on")
    assert code == 0 and out.startswith(f"maintenance mode was already on (by {ME}, ")
    state = ops.db(lambda s: s.read("ops"))
    assert state.control.maintenance_by == ME
    assert not ops.db(lambda s: s.try_acquire("ops", "m2", 1000, instance="x")).acquired
    code, out, _ = ops.fos("status")
    assert "MAINTENANCE MODE on for 0s (by " in out
    assert ops.fos("maintenance", "off")[:2] == (
        0,
        f"maintenance mode off (by {ME}): the agents reconcile with the real state and act again\n",
    )
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_maintenance_off_is_refused_while_the_holders_agent_is_stopped_with_its_app_left_running(ops: Ops) -> None:
    # The runbook slip: m1's agent stopped under maintenance (its app still runs, unsupervised); off now, m2 would
    # take over and start a second copy. Refused, naming the node and the fix; --force overrides.
    async def stopped_in_maintenance(store: SqlLeaseStore) -> None:
        await store.record_node("ops", "m1", "stopped", None, None, "0.3", instance="i-m1", sees="maintenance")

    ops.db(_setup(_holds, lambda s: s.set_maintenance("ops", True, "bob@h"), stopped_in_maintenance))
    code, out, err = ops.fos("maintenance", "off")
    assert (code, out) == (1, "")
    assert err == (
        "fos maintenance: not done: the agent on m1 (the holder) was stopped during maintenance and left its "
        "application running: start fos on m1 first (it adopts the application), or pass --force if that "
        "application is known to be stopped\n"
    )
    assert ops.db(lambda s: s.read("ops")).control.maintenance
    code, out, _ = ops.fos("maintenance", "off", "--force")
    assert code == 0 and out.startswith(f"maintenance mode off (by {ME})")
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_maintenance_off_is_refused_while_the_holders_row_sees_maintenance_and_is_stale(ops: Ops) -> None:
    # A stop whose last row write failed leaves "active" (seeing maintenance) behind: older than 3 heartbeats,
    # the agent may be gone with its app left running. Refused as for "stopped"; --force overrides.
    ops.db(_setup(_holds, lambda s: s.set_maintenance("ops", True, "bob@h")))
    ops.db(lambda s: s.record_node("ops", "m1", "active", True, None, "0.3", instance="i-m1", sees="maintenance"))
    ops.sql(
        "UPDATE fos_node SET last_seen = strftime('%Y-%m-%d %H:%M:%f', 'now', '-10 seconds') WHERE node_name = 'm1'"
    )
    code, out, err = ops.fos("maintenance", "off")
    assert (code, out) == (1, "")
    assert err == (
        "fos maintenance: not done: the agent on m1 (the holder) was not seen for 10 s, seeing maintenance mode: it "
        "may have stopped and left its application running: start fos on m1 first (it adopts the application), "
        "or pass --force if that application is known to be stopped\n"
    )
    assert ops.db(lambda s: s.read("ops")).control.maintenance
    assert ops.fos("maintenance", "off", "--force")[0] == 0
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_maintenance_off_goes_ahead_once_the_holders_agent_runs_again(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: s.set_maintenance("ops", True, "bob@h")))
    ops.db(lambda s: s.record_node("ops", "m1", "active", True, None, "0.3", instance="i-m1", sees="maintenance"))
    assert ops.fos("maintenance", "off")[0] == 0
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_maintenance_is_refused_while_nobody_holds_the_lease(ops: Ops) -> None:
    # Maintenance keeps everyone but the holder's node out: on a free lease nobody would serve until it is off.
    ops.db(_setup(_holds, lambda s: s.release("ops", "m1", 1), lambda s: _standby(s, "m1")))
    code, out, err = ops.fos("maintenance", "on")
    assert (code, out) == (1, "")
    assert err == (
        "fos maintenance: not done: no node holds the lease, and maintenance mode would keep every node from "
        "taking it: wait until one serves (`fos status`), then retry\n"
    )
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_maintenance_is_refused_while_a_switchover_is_pending_or_under_way(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: s.request_switchover("ops", "m2", 0, "bob@h")))
    code, _, err = ops.fos("maintenance", "on")
    assert code == 1 and "a switchover to m2 is pending: wait for it, or `fos switchover --cancel`" in err
    assert not ops.db(lambda s: s.read("ops")).control.maintenance
    assert ops.db(lambda s: s.handover("ops", "m1", 1, "m2", 30_000))
    code, _, err = ops.fos("maintenance", "on")
    assert code == 1 and "a switchover is under way (the lease is handed over to m2): try again in a moment" in err
    assert not ops.db(lambda s: s.read("ops")).control.maintenance


def test_disable_stops_every_acquisition_and_cancels_a_pending_switchover(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: s.request_switchover("ops", "m2", 60_000, "bob@h")))
    code, out, _ = ops.fos("disable")
    assert code == 0
    assert out == (
        f"cluster ops disabled by {ME}: m1 releases the common IP, the application and the lease; "
        "no node acquires until `fos enable`\n"
    )
    state = ops.db(lambda s: s.read("ops"))
    assert state.control.disabled_by == ME and state.control.switchover is None
    assert not ops.db(lambda s: s.try_acquire("ops", "m1", 1000, instance="i-m1")).acquired  # not even the holder
    assert ops.fos("disable")[1].startswith(f"the cluster was already disabled (by {ME}")
    assert "DISABLED for 0s (by " in ops.fos("status")[1]
    assert ops.fos("enable")[:2] == (0, f"enabled by {ME}: the cluster; the agents compete for the lease again\n")
    assert ops.fos("enable")[1] == "cluster ops was already enabled, with automatic failover on\n"


def test_enable_turns_automatic_failover_on_after_flapping(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: s.set_failover_off("ops", "m2", "4 take-overs within 3600 s")))
    assert "FLAPPING: automatic failover off for 0s (4 take-overs within 3600 s); `fos enable`" in ops.fos("status")[1]
    code, out, _ = ops.fos("enable")
    assert code == 0 and "automatic failover (4 take-overs within 3600 s)" in out
    assert not ops.db(lambda s: s.read("ops")).control.failover_off


def test_status_shows_what_each_agent_sees(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: s.record_node("ops", "m2", "standby", None, None, "0.3", sees="maintenance")))
    out = ops.fos("status")[1]
    assert [line.split()[4] for line in out.splitlines() if line.startswith(("m1 ", "m2 "))] == [
        "normal",
        "maintenance",
    ]
    doc = json.loads(ops.fos("status", "--json")[1])
    assert [n["sees"] for n in doc["nodes"]] == ["", "maintenance"]
    assert doc["lease"]["maintenance_since"] is None


# ---- fos history ---------------------------------------------------------------------------------------------------


def test_history_shows_a_switchover_with_its_phases_trigger_and_epoch(ops: Ops) -> None:
    ops.db(_setup(_holds, lambda s: _standby(s, "m2")))
    assert ops.fos("switchover", "--to", "m2")[0] == 0

    async def agents_act(s: SqlLeaseStore) -> None:
        assert await s.handover("ops", "m1", 1, "m2", 2000)
        state = await s.read("ops")
        assert (await s.try_acquire("ops", "m2", 2000, expected=state, instance="i-m2")).acquired
        await s.record_event("ops", "m2", EventKind.IP_BOUND, 2, "10.0.0.5/24 on eth0")
        await s.record_event("ops", "m2", EventKind.PROMOTED, 2, "serving")

    ops.db(agents_act)
    code, out, _ = ops.fos("history", "--json", "--since", "1h")
    doc = json.loads(out)
    assert code == 0 and [e["kind"] for e in doc["events"]][:2] == ["acquired", "switchover_requested"]
    t = doc["transitions"][-1]
    assert (t["epoch"], t["from_node"], t["node"], t["trigger"]) == (2, "m1", "m2", f"operator {ME}")
    assert all(v is not None for v in t["phases"].values()) and set(t["phases"]) == {
        "handed over",
        "acquired",
        "ip_bound",
        "app_healthy",
    }
    assert all(v is not None and v >= 0 for v in t["durations_s"].values())
    code, out, _ = ops.fos("history")
    assert code == 0 and f"  epoch 2: m1 -> m2, trigger: operator {ME}" in out and "-> app healthy" in out


def test_history_since_leaves_older_events_out(ops: Ops) -> None:
    ops.db(_holds)
    ops.sql("UPDATE fos_event SET at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-2 hours')")
    ops.db(lambda s: s.set_maintenance("ops", True, "bob@h"))
    kinds = [e["kind"] for e in json.loads(ops.fos("history", "--json", "--since", "1h")[1])["events"]]
    assert kinds == ["maintenance_on"]
    assert len(json.loads(ops.fos("history", "--json")[1])["events"]) == 2


# ---- pure rules --------------------------------------------------------------------------------------------------

CFG = parse(
    {
        "cluster": {"name": "ops", "address_driver": "none"},
        "nodes": [{"name": "m1"}, {"name": "m2", "priority": 10}, {"name": "m3", "priority": 50}],
        "database": {"dsn": "Driver=SQLite3;Database=/x.db"},
        "lease": {"ttl": 3, "heartbeat": 1},
    }
)
HELD = LeaseState("ops", "m1", 4, 2000)


def row(node: str, role: str = "standby", healthy: bool | None = None, age: float = 0.5) -> NodeRecord:
    return NodeRecord("ops", node, role, healthy, None, "0.3", age, None, "")


@pytest.mark.parametrize(
    ("rows", "best"),
    [
        ([row("m2"), row("m3")], "m3"),
        ([row("m2"), row("m3", healthy=False)], "m2"),
        ([row("m2"), row("m3", age=3.5)], "m2"),
        ([row("m2", "hold_off"), row("m3", "stopped")], None),
        ([row("m1", "active", True)], None),
    ],
)
def test_the_best_target_is_alive_healthy_and_preferred(rows: list[NodeRecord], best: str | None) -> None:
    assert best_target(CFG, HELD, rows) == best


def test_target_refusals_name_the_reason() -> None:
    assert target_refusal("m2", HELD, [row("m2")], 1.0) is None
    assert "already holds" in (target_refusal("m1", HELD, [row("m1")], 1.0) or "")
    assert "last seen 4 s ago" in (target_refusal("m2", HELD, [row("m2", age=3.6)], 1.0) or "")


@pytest.mark.parametrize(
    ("sees", "on", "ack"),
    [
        ("maintenance", True, True),
        ("", True, False),
        ("", False, True),
        ("disabled,maintenance", False, False),
        ("disabled", False, True),
        (None, True, False),
        (None, False, False),
    ],
)
def test_an_agent_acknowledges_by_what_it_reports_it_sees(sees: str | None, on: bool, ack: bool) -> None:
    assert acknowledged(NodeRecord("ops", "m1", "standby", None, None, None, 0.1, None, sees), on) == ack
