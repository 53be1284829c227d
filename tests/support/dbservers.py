"""Throwaway PostgreSQL and MariaDB servers for tests and benchmarks.

Each server gets its own data directory, socket directory and TCP port, runs as the distribution's service user
(the servers refuse to run as root) and is stopped and deleted by `stop()`. Nothing here touches the
distribution's own clusters or ports.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

PASSWORD = "fos-test-Secret1"
USER = "fos"
DATABASE = "fos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"server did not listen on {host}:{port} within {timeout}s")


def _as_user(user: str, argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", user, "--", *argv]


@dataclass
class DbServer:
    kind: str
    host: str
    port: int
    workdir: str
    netns: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _stop_argv: list[str] = field(default_factory=list)

    def dsn(self, password: str = PASSWORD, database: str = DATABASE, **extra: str) -> str:
        if self.kind == "postgresql":
            parts = {
                "Driver": "PostgreSQL Unicode",
                "Server": self.host,
                "Port": str(self.port),
                "Database": database,
                "Uid": USER,
                "Pwd": password,
                "KeepaliveTime": "5",
                "KeepaliveInterval": "1",
            }
        else:
            parts = {
                "Driver": "MariaDB Unicode",
                "Server": self.host,
                "Port": str(self.port),
                "Database": database,
                "Uid": USER,
                "Pwd": password,
                "OPTION": "2",
                "CONN_TIMEOUT": "5",
                "READ_TIMEOUT": "5",
                "WRITE_TIMEOUT": "5",
            }
        parts.update(extra)
        return ";".join(f"{k}={v}" for k, v in parts.items())

    def admin_sql(self, sql: str, database: str = DATABASE) -> str:
        """Run a script of SQL statements as the server's administrator (PostgreSQL: the bootstrap superuser, each
        statement in its own transaction; MariaDB: root over the socket); return its output. For test set-up only:
        creating databases, logins and grants."""
        if self.kind == "postgresql":
            argv = [f"{_pg_bindir()}/psql", "-h", self.workdir, "-p", str(self.port), "-U", USER, "-d", database]
            argv = _prefix(self.netns) + _as_user("postgres", [*argv, "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"])
        else:
            sock = os.path.join(self.workdir, "mysqld.sock")
            argv = [*_prefix(self.netns), "mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-N", database]
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"admin SQL failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A fresh empty database that the test login owns; returns its DSN."""
        if self.kind == "postgresql":
            self.admin_sql(f"CREATE DATABASE {name}")
        else:
            self.admin_sql(f"CREATE DATABASE {name}; GRANT ALL ON {name}.* TO '{USER}'@'%';")
        return self.dsn(database=name)

    def stop(self) -> None:
        if self._stop_argv:
            subprocess.run(self._stop_argv, capture_output=True, timeout=30, check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise FileNotFoundError("PostgreSQL server binaries not found: install the Debian package 'postgresql'")
    return os.path.dirname(found[-1])


def start_postgresql(host: str = "127.0.0.1", port: int | None = None, netns: str | None = None) -> DbServer:
    bindir = _pg_bindir()
    port = port or free_port()
    work = tempfile.mkdtemp(prefix="fos-pg-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data")
    os.makedirs(data)
    shutil.chown(work, "postgres", "postgres")
    shutil.chown(data, "postgres", "postgres")
    pwfile = os.path.join(work, "pw")
    with open(pwfile, "w") as f:
        f.write(PASSWORD)
    shutil.chown(pwfile, "postgres", "postgres")
    subprocess.run(
        _as_user(
            "postgres",
            [
                f"{bindir}/initdb",
                "-D",
                data,
                "-U",
                USER,
                "--pwfile",
                pwfile,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
            ],
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    if netns:  # clients come from the other test hosts, not from loopback
        with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
    listen = "*" if netns else host
    argv = [
        f"{bindir}/postgres",
        "-D",
        data,
        "-p",
        str(port),
        "-k",
        work,
        "-c",
        f"listen_addresses={listen}",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=300",
        "-c",
        "log_min_messages=fatal",
    ]
    with open(os.path.join(work, "server.log"), "wb") as log:
        proc = subprocess.Popen(_prefix(netns) + _as_user("postgres", argv), stdout=log, stderr=log)
    # pg_ctl's immediate mode ends every session: a plain SIGTERM is a "smart" shutdown that waits for clients,
    # and a client cut off by a test (blackholed route, link down) would keep the server alive for hours.
    stop = _as_user("postgres", [f"{bindir}/pg_ctl", "stop", "-D", data, "-m", "immediate", "-w", "-t", "20"])
    server = DbServer("postgresql", host, port, work, netns, proc, stop)
    try:
        _wait_port_in(netns, host, port, proc)
        subprocess.run(
            _prefix(netns)
            + _as_user(
                "postgres",
                [
                    f"{bindir}/psql",
                    "-h",
                    work,
                    "-p",
                    str(port),
                    "-U",
                    USER,
                    "-d",
                    "postgres",
                    "-q",
                    "-c",
                    f"CREATE DATABASE {DATABASE}",
                    "-c",
                    f"CREATE DATABASE {DATABASE}_empty",
                ],
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
    except BaseException:
        server.stop()
        raise
    return server


def start_mariadb(host: str = "127.0.0.1", port: int | None = None, netns: str | None = None) -> DbServer:
    if not shutil.which("mariadbd") and not os.path.exists("/usr/sbin/mariadbd"):
        raise FileNotFoundError("MariaDB server not found: install the Debian package 'mariadb-server'")
    port = port or free_port()
    work = tempfile.mkdtemp(prefix="fos-mariadb-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data")
    os.makedirs(data)
    shutil.chown(work, "mysql", "mysql")
    shutil.chown(data, "mysql", "mysql")
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            "--user=mysql",
            f"--datadir={data}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    sock = os.path.join(work, "mysqld.sock")
    bind = "0.0.0.0" if netns else host
    argv = [
        "/usr/sbin/mariadbd",
        "--no-defaults",
        "--user=mysql",
        f"--datadir={data}",
        f"--socket={sock}",
        f"--port={port}",
        f"--bind-address={bind}",
        f"--pid-file={work}/mysqld.pid",
        "--skip-name-resolve",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-buffer-pool-size=64M",
        "--max-connections=500",
        "--skip-log-bin",
    ]
    with open(os.path.join(work, "server.log"), "wb") as log:
        proc = subprocess.Popen(_prefix(netns) + argv, stdout=log, stderr=log)
    server = DbServer("mysql", host, port, work, netns, proc)
    try:
        _wait_port_in(netns, host, port, proc)
        sql = (
            f"CREATE DATABASE {DATABASE}; CREATE DATABASE {DATABASE}_empty; "
            f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; "
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%'; GRANT ALL ON {DATABASE}_empty.* TO '{USER}'@'%'; "
            "FLUSH PRIVILEGES;"
        )
        subprocess.run(
            [*_prefix(netns), "mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except BaseException:
        server.stop()
        raise
    return server


def _wait_port_in(netns: str | None, host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    if netns is None:
        _wait_port(host, port, 60, proc)
        return
    deadline = time.monotonic() + 60
    probe = f"import socket; socket.create_connection(('{host}', {port}), timeout=0.5)"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        if (
            subprocess.run(
                ["ip", "netns", "exec", netns, "python3", "-c", probe], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"server did not listen on {host}:{port} in {netns}")
