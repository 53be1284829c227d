"""The `fos` command line, run as a real process against real databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser
from agent.cli_control import node_is_down
from lease import SqlLeaseStore
from lease.schema import SCHEMA_VERSION
from tests.conftest import unique
from tests.support import dbservers
from tests.support.dbservers import DbServer

FOS = [sys.executable, "-m", "agent"]


def write_config(path: Path, cluster: str, dsn: str, dialect: str | None = None, **lease: float) -> Path:
    lines = [
        "[cluster]",
        f'name = "{cluster}"',
        'common_ip = "10.99.0.100/24"',
        "[[nodes]]",
        'name = "m1"',
        'interface = "eth0"',
        "[[nodes]]",
        'name = "m2"',
        'interface = "eth0"',
        "[database]",
        'dsn = "${FOS_TEST_DSN}"',
    ]
    if dialect:
        lines.append(f'dialect = "{dialect}"')
    lines.append("[lease]")
    lines += [f"{k} = {v}" for k, v in (lease or {"ttl": 4, "heartbeat": 1}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fos(*args: str, dsn: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOS_TEST_DSN": dsn}
    return subprocess.run([*FOS, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def native_query(kind: str, server: DbServer | None, sqlite_path: str | None, sql: str) -> str:
    """Run SQL through the database's own command-line client, as a DBA would."""
    if kind == "sqlite":
        assert sqlite_path is not None
        return subprocess.run(
            ["sqlite3", "-header", sqlite_path, sql], capture_output=True, text=True, check=True
        ).stdout
    assert server is not None
    if kind == "postgresql":
        argv = [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            dbservers.USER,
            "-d",
            dbservers.DATABASE,
            "-c",
            sql,
        ]
        env = {**os.environ, "PGPASSWORD": dbservers.PASSWORD}
    else:
        argv = [
            "mariadb",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            str(server.port),
            "-u",
            dbservers.USER,
            f"-p{dbservers.PASSWORD}",
            dbservers.DATABASE,
            "-e",
            sql,
        ]
        env = dict(os.environ)
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "sqlite"])
def test_init_db_then_plain_sql_on_the_status_view_shows_the_cluster_row(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server: DbServer | None = None
    sqlite_path: str | None = None
    if kind == "sqlite":
        sqlite_path = str(tmp_path / "lease.db")
        dsn = f"Driver=SQLite3;Database={sqlite_path};Timeout=2000"
    else:
        server = request.getfixturevalue("pg_server" if kind == "postgresql" else "mariadb_server")
        assert server is not None
        dsn = server.dsn()
    cluster = unique("cli")
    cfg = write_config(tmp_path / "fos.toml", cluster, dsn)
    first = fos("init-db", "--config", str(cfg), dsn=dsn)
    assert first.returncode == 0, first.stderr
    again = fos("init-db", "--config", str(cfg), dsn=dsn)
    assert again.returncode == 0 and f"(was {SCHEMA_VERSION})" in again.stdout
    out = native_query(
        kind,
        server,
        sqlite_path,
        f"SELECT cluster_name, epoch, expired FROM fos_lease_status WHERE cluster_name = '{cluster}'",
    )
    assert cluster in out
    status = fos("status", "--json", "--config", str(cfg), dsn=dsn)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["cluster"] == cluster and doc["lease"]["holder"] is None and doc["lease"]["epoch"] == 0


def test_status_against_an_unreachable_database_fails_with_one_line(tmp_path: Path) -> None:
    dsn = f"Driver=PostgreSQL Unicode;Server=127.0.0.1;Port={dbservers.free_port()};Uid=fos;Pwd=TopSecret-9"
    cfg = write_config(tmp_path / "fos.toml", "c1", dsn)
    result = fos("status", "--config", str(cfg), dsn=dsn)
    assert result.returncode == 1
    assert result.stderr.startswith("fos: database:") and result.stderr.count("\n") == 1
    assert "TopSecret-9" not in result.stderr + result.stdout


def test_config_check_refuses_unsafe_timing_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "lease.db"
    dsn = f"Driver=SQLite3;Database={db}"
    cfg = write_config(tmp_path / "fos.toml", "c1", dsn, ttl=10, heartbeat=5)
    result = fos("config", "check", "--config", str(cfg), dsn=dsn)
    assert result.returncode == 2
    assert "lease.heartbeat = 5 is more than lease.ttl / 3" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not db.exists()


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fos.toml", "c1", "Driver=SQLite3;Database=/nonexistent/x.db")
    result = fos("config", "check", "--config", str(cfg), dsn="Driver=SQLite3;Database=/nonexistent/x.db")
    assert result.returncode == 0 and "ok" in result.stdout


def test_unknown_command_and_missing_config_are_usage_errors() -> None:
    bad = fos("frobnicate")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    missing = fos("status")
    assert missing.returncode == 2 and "--config" in missing.stderr


def test_init_db_with_a_wrong_password_says_so_and_exits_1(tmp_path: Path, pg_server: DbServer) -> None:
    dsn = pg_server.dsn(password="Not-The-Password-1")
    cfg = write_config(tmp_path / "fos.toml", "c1", dsn)
    result = fos("init-db", "--config", str(cfg), dsn=dsn)
    assert result.returncode == 1
    assert "refused the login" in result.stderr and "Not-The-Password-1" not in result.stderr


def test_check_ip_says_free_in_use_or_usage_error(lan: Any) -> None:
    m1, m2 = lan.add_host("m1"), lan.add_host("m2")
    vip = "10.213.0.100"
    free = m2.run(*FOS, "check-ip", vip, "--interface", "eth0", "--timeout", "0.5", check=False)
    assert free.returncode == 0 and "is free" in free.stdout
    m1.run("ip", "addr", "add", f"{vip}/24", "dev", "eth0")
    used = m2.run(*FOS, "check-ip", vip, "--interface", "eth0", "--timeout", "0.5", check=False)
    assert used.returncode == 1 and m1.mac in used.stdout
    bad_if = m2.run(*FOS, "check-ip", vip, "--interface", "eth7", check=False)
    assert bad_if.returncode == 2 and "eth7" in bad_if.stderr and bad_if.stderr.count("\n") == 1
    bad_ip = m2.run(*FOS, "check-ip", "10.213.0.999", "--interface", "eth0", check=False)
    assert bad_ip.returncode == 2 and "not an IP address" in bad_ip.stderr


# ---- defaults, config check without secrets, status of dead nodes (issue 9 minor items) ------------------------


@pytest.mark.parametrize("argv", [["run"], ["init-db"], ["status"], ["config", "check"]])
def test_every_config_command_defaults_to_etc_fos(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "/etc/fos/fos.toml"


def test_a_missing_default_config_names_the_path_on_one_line() -> None:
    result = fos("status")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "/etc/fos/fos.toml does not exist" in result.stderr


def test_config_check_needs_no_dsn_secrets_in_the_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fos.toml", "c1", "")
    text = cfg.read_text().replace("${FOS_TEST_DSN}", "Driver=SQLite3;Database=/x.db;Pwd=${FOS_UNSET_SECRET_9}")
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "FOS_UNSET_SECRET_9"}
    result = subprocess.run(
        [*FOS, "config", "check", "--config", str(cfg)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "${FOS_UNSET_SECRET_9} is not set here" in result.stdout
    run = subprocess.run([*FOS, "run", "--config", str(cfg)], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 2 and "FOS_UNSET_SECRET_9" in run.stderr and run.stderr.count("\n") == 1


def test_config_check_says_when_this_machine_is_no_node(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fos.toml", "c1", "Driver=SQLite3;Database=/x.db")
    result = fos("config", "check", "--config", str(cfg), dsn="x")
    assert result.returncode == 0 and "this machine matches none of the nodes" in result.stdout


def test_run_refuses_an_unwritable_state_dir_before_starting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fos.toml", "c1", "Driver=SQLite3;Database=/x.db")
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = fos("run", "--config", str(cfg), "--node", "m1", "--state-dir", str(blocker / "sub"), dsn="x")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--state-dir" in result.stderr and "is not a directory" in result.stderr


@pytest.mark.parametrize(
    ("role", "age", "down"),
    [
        ("active", 0.5, False),
        ("active", 3.0, False),
        ("active", 3.01, True),
        ("standby", None, True),
        ("stopped", 0.1, True),
        ("fenced", 2.0, False),
    ],
)
def test_node_is_down_after_three_heartbeats_or_when_stopped(role: str, age: float | None, down: bool) -> None:
    assert node_is_down(role, age, heartbeat=1.0) is down


def test_status_shows_dead_and_stopped_nodes_as_down_with_their_age(tmp_path: Path) -> None:
    db = str(tmp_path / "lease.db")
    dsn = f"Driver=SQLite3;Database={db};Timeout=2000"
    # heartbeat 10 s: m3's fresh row stays "alive" (3 heartbeats) however slowly `fos status` starts on a busy machine
    cfg = write_config(tmp_path / "fos.toml", "c1", dsn, ttl=30, heartbeat=10)
    cfg.write_text(cfg.read_text().replace("[cluster]", '[cluster]\nalias_url = "http://helpdesk.example.com/"'))
    assert fos("init-db", "--config", str(cfg), dsn=dsn).returncode == 0

    async def record() -> None:
        store = SqlLeaseStore(dsn)
        try:
            await store.record_node("c1", "m1", "active", True, None, "t")
            await store.record_node("c1", "m2", "stopped", None, None, "t")
            await store.record_node("c1", "m3", "standby", True, None, "t")
        finally:
            await store.close()

    asyncio.run(record())
    native_query(
        "sqlite",
        None,
        db,
        "UPDATE fos_node SET last_seen = strftime('%Y-%m-%d %H:%M:%f', 'now', '-60 seconds') WHERE node_name = 'm1'",
    )
    result = fos("status", "--config", str(cfg), dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "cluster c1 (http://helpdesk.example.com/)" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line[:2] in ("m1", "m2", "m3")}
    assert rows["m1"][1:3] == ["DOWN", "-"] and float(rows["m1"][3].rstrip("s")) >= 59
    assert rows["m2"][1:3] == ["DOWN", "-"]
    assert rows["m3"][1:3] == ["standby", "healthy"]
    doc = json.loads(fos("status", "--json", "--config", str(cfg), dsn=dsn).stdout)
    assert doc["alias_url"] == "http://helpdesk.example.com/"
    assert {n["node"]: n["down"] for n in doc["nodes"]} == {"m1": True, "m2": True, "m3": False}


def test_config_check_on_a_node_names_it_and_checks_its_interface(lan: Any, tmp_path: Path) -> None:
    m1 = lan.add_host("m1")
    cfg = tmp_path / "fos.toml"
    lines = [
        "[cluster]",
        'name = "c1"',
        'common_ip = "10.213.0.100/24"',
        "[[nodes]]",
        'name = "n1"',
        'interface = "eth0"',
        f'url = "http://{m1.ip}:8080/"',
        "[[nodes]]",
        'name = "n2"',
        'interface = "eth0"',
        'url = "http://10.213.0.222:8080/"',
        "[database]",
        'dsn = "Driver=SQLite3;Database=/x.db;Pwd=${FOS_UNSET_SECRET_9}"',
        "[lease]",
        "ttl = 4",
        "heartbeat = 1",
        "[http]",
        'listen = "127.0.0.1:8470"',
    ]
    cfg.write_text("\n".join(lines) + "\n")
    ok = m1.run(*FOS, "config", "check", "--config", str(cfg), check=False)
    assert ok.returncode == 0, ok.stderr
    assert "this machine is node n1: interface eth0 is up and on the subnet of 10.213.0.100/24" in ok.stdout
    cfg.write_text(cfg.read_text().replace('interface = "eth0"', 'interface = "eth7"', 1))
    bad_if = m1.run(*FOS, "config", "check", "--config", str(cfg), check=False)
    assert bad_if.returncode == 2 and "eth7" in bad_if.stderr and bad_if.stderr.count("\n") == 1
    cfg.write_text(
        cfg.read_text().replace('interface = "eth7"', 'interface = "eth0"').replace("10.213.0.100", "10.9.9.9")
    )
    bad_net = m1.run(*FOS, "config", "check", "--config", str(cfg), check=False)
    assert bad_net.returncode == 2 and "is not in a subnet of eth0" in bad_net.stderr
    cfg.write_text(
        cfg.read_text().replace("10.9.9.9", "10.213.0.100").replace("127.0.0.1:8470", "nosuch.fos.test:8470")
    )
    bad_listen = m1.run(*FOS, "config", "check", "--config", str(cfg), check=False)  # no DNS server in the namespace
    assert bad_listen.returncode == 2 and "does not resolve on this machine" in bad_listen.stderr
    assert bad_listen.stderr.count("\n") == 1
    cfg.write_text(cfg.read_text().replace(";Pwd=${FOS_UNSET_SECRET_9}", ""))  # `fos run` needs its secrets
    run = m1.run(*FOS, "run", "--config", str(cfg), "--state-dir", str(tmp_path), check=False, timeout=30)
    assert run.returncode == 2 and "does not resolve on this machine" in run.stderr  # before anything started
    assert run.stderr.count("\n") == 1 and not m1.has_address("10.213.0.100")


def test_config_check_on_a_node_checks_the_application_user_and_group(tmp_path: Path) -> None:
    cfg = tmp_path / "fos.toml"
    base = [
        "[cluster]",
        'name = "c1"',
        'address_driver = "none"',
        "[[nodes]]",
        'name = "m1"',
        "[database]",
        'dsn = "Driver=SQLite3;Database=/x.db"',
        "[application]",
        'command = "true"',
    ]
    cfg.write_text("\n".join([*base, 'user = "root"', 'group = "0"']) + "\n")
    ok = fos("config", "check", "--config", str(cfg), "--node", "m1")
    assert ok.returncode == 0, ok.stderr
    assert "this machine is node m1:" in ok.stdout and "application.user root exists" in ok.stdout
    cfg.write_text("\n".join([*base, 'user = "no-such-user-fos9"']) + "\n")
    bad = fos("config", "check", "--config", str(cfg), "--node", "m1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "application.user = 'no-such-user-fos9' is not a user on this machine" in bad.stderr
    cfg.write_text("\n".join([*base, 'group = "99999999999999999999"']) + "\n")
    huge = fos("config", "check", "--config", str(cfg), "--node", "m1")
    assert huge.returncode == 2 and "is not a group on this machine" in huge.stderr and huge.stderr.count("\n") == 1


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0", "1e9", "soon"])
def test_check_ip_refuses_a_timeout_that_is_not_a_sane_number_of_seconds(timeout: str) -> None:
    result = fos("check-ip", "10.0.0.1", "--interface", "lo", "--timeout", timeout)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--timeout" in result.stderr and "is not a number of seconds" in result.stderr


def test_config_check_picks_the_node_whose_url_host_name_resolves_here(lan: Any, tmp_path: Path) -> None:
    m1 = lan.add_host("m1")
    # `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: a name only this namespace resolves.
    etc = Path("/etc/netns") / m1.ns
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{m1.ip} m1.fos.test\n10.213.0.222 m2.fos.test\n")
        cfg = tmp_path / "fos.toml"
        nodes = [f'[[nodes]]\nname = "{n}"\ninterface = "eth0"\nurl = "http://{n}.fos.test:8080/"' for n in ("a", "b")]
        text = "\n".join(
            [
                '[cluster]\nname = "c1"\ncommon_ip = "10.213.0.100/24"',
                nodes[0].replace("a.fos.test", "m2.fos.test"),
                nodes[1].replace("b.fos.test", "m1.fos.test"),
                '[database]\ndsn = "Driver=SQLite3;Database=/x.db"\n[lease]\nttl = 4\nheartbeat = 1',
            ]
        )
        cfg.write_text(text + "\n")
        result = m1.run(*FOS, "config", "check", "--config", str(cfg), check=False)
        assert result.returncode == 0, result.stderr
        assert "this machine is node b: interface eth0 is up" in result.stdout
    finally:
        (etc / "hosts").unlink(missing_ok=True)
        etc.rmdir()
        with contextlib.suppress(OSError):
            etc.parent.rmdir()  # only if no one else's namespace uses it
