"""The `fos` command line, run as a real process against real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
    lines += [f"{k} = {v}" for k, v in (lease or {"ttl": 3, "heartbeat": 1}).items()]
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
    assert again.returncode == 0 and "(was 1)" in again.stdout
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
