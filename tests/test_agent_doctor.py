"""`fos doctor`'s checks, each on its pass and its fail path, and the preflight defects found by a new user
(`fos check-ip` outside the interface's subnet)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.doctor import check_app, exit_code, render
from agent.doctor_checks import (
    Check,
    capabilities_missing,
    certificate_verdict,
    check_alias_certificate,
    check_alias_resolves,
    check_config_permissions,
    check_database,
    compare_macs,
    peers_seen,
    secret_in_config,
)
from lease import NodeRecord, SqlLeaseStore
from tests.support.dbservers import DbServer
from tests.support.netns import SUBNET, Host, Lan
from tests.support.sshd import ReplicationBed
from tests.test_lease_privileges import logins, server  # noqa: F401 - fixtures: the documented agent login

FOS = [sys.executable, "-m", "agent"]


@pytest.mark.netns
def test_check_ip_refuses_an_address_outside_the_interfaces_subnet(lan: Any) -> None:
    m1 = lan.add_host("m1")  # eth0 is on 10.213.0.0/24; nobody answers for 10.99.0.50, but the agent refuses it
    outside = m1.run(*FOS, "check-ip", "10.99.0.50", "--interface", "eth0", "--timeout", "0.3", check=False)
    assert outside.returncode == 2, outside.stdout
    assert "10.99.0.50 is not in a subnet of eth0 (its IPv4 subnets: 10.213.0.0/24)" in outside.stderr
    assert outside.stderr.count("\n") == 1 and outside.stdout == ""
    inside = m1.run(*FOS, "check-ip", "10.213.0.50", "--interface", "eth0", "--timeout", "0.3", check=False)
    assert inside.returncode == 0 and "is free" in inside.stdout


# ---- pure decisions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"database": {"dsn": "Driver=X;Uid=fos;Pwd=s3cret"}}, "database.dsn"),
        ({"database": {"dsn": "Driver=X;Uid=fos;PASSWORD = s3cret;Port=1"}}, "database.dsn"),
        ({"database": {"dsn": "Driver=X;Uid=fos;Pwd=${FOS_DB_PASSWORD}"}}, None),
        ({"database": {"dsn": "Driver=SQLite3;Database=/var/lib/fos/lease.db"}}, None),
        (
            {"database": {"dsn": "Driver=X"}, "application": {"health": {"http": "http://u:pw@127.0.0.1/"}}},
            "application.health.http",
        ),
        ({"database": {"dsn": "Driver=X"}, "application": {"health": {"http": "http://127.0.0.1/"}}}, None),
    ],
)
def test_a_literal_secret_in_the_config_is_found(data: dict[str, Any], key: str | None) -> None:
    assert secret_in_config(data) == key


@pytest.mark.parametrize(
    ("cap_eff", "missing"),
    [
        ("000001ffffffffff", []),
        ("0000000000003000", []),
        ("0000000000001000", ["CAP_NET_RAW"]),
        ("0000000000002000", ["CAP_NET_ADMIN"]),
        ("0000000000000000", ["CAP_NET_ADMIN", "CAP_NET_RAW"]),
    ],
)
def test_capabilities_are_read_from_the_effective_set(cap_eff: str, missing: list[str]) -> None:
    assert capabilities_missing(cap_eff) == missing


def test_peer_macs_must_differ_from_ours() -> None:
    checks = compare_macs("02:00:00:00:00:01", {"m2": "02:00:00:00:00:02", "m3": "02:00:00:00:00:01", "m4": None})
    assert [(c.name, c.status) for c in checks] == [
        ("peer.m2.mac", "pass"),
        ("peer.m3.mac", "fail"),
        ("peer.m4.mac", "warn"),
    ]
    assert "our own MAC" in checks[1].message and checks[1].fix


def test_peer_agents_must_have_been_seen_within_three_heartbeats() -> None:
    rows = [
        NodeRecord("c", "m1", "active", True, None, "1", 0.5),
        NodeRecord("c", "m2", "standby", None, None, "1", 2.5),
        NodeRecord("c", "m3", "standby", None, None, "1", 3.5),
        NodeRecord("c", "m4", "stopped", None, None, "1", 0.1),
    ]
    checks = peers_seen(rows, "m1", ["m1", "m2", "m3", "m4", "m5"], heartbeat=1.0)
    assert [(c.name, c.status) for c in checks] == [
        ("peer.m2.agent", "pass"),
        ("peer.m3.agent", "warn"),
        ("peer.m4.agent", "warn"),
        ("peer.m5.agent", "warn"),
    ]
    assert "never ran" in checks[3].message


def test_a_certificate_fails_unverified_and_warns_within_30_days() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert certificate_verdict("h", None, now + timedelta(days=90), now).status == "pass"
    assert certificate_verdict("h", None, now + timedelta(days=10), now).status == "warn"
    bad = certificate_verdict("h", "self-signed certificate", None, now)
    assert bad.status == "fail" and "self-signed" in bad.message and "signed by a CA" in bad.fix


def test_the_exit_code_is_1_only_when_a_check_fails() -> None:
    assert exit_code([Check("a", "pass", ""), Check("b", "warn", ""), Check("c", "skip", "")]) == 0
    assert exit_code([Check("a", "pass", ""), Check("b", "fail", "", "do this")]) == 1
    text = render([Check("b", "fail", "broken", "do this")])
    assert "FAIL  b" in text and "fix: do this" in text and "1 fail" in text


# ---- configuration, capabilities, database, application, alias ------------------------------------------------


def fos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FOS, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def write(path: Path, dsn: str, extra: str = "", mode: int = 0o600) -> str:
    path.write_text(
        f'[cluster]\nname = "dc"\naddress_driver = "none"\n[[nodes]]\nname = "m1"\n[[nodes]]\nname = "m2"\n'
        f'[database]\ndsn = "{dsn}"\n[lease]\nttl = 4\nheartbeat = 1\n[http]\nlisten = ""\n{extra}'
    )
    path.chmod(mode)
    return str(path)


def by_name(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    doc = json.loads(result.stdout)
    return {c["name"]: c for c in doc["checks"]}


def test_an_invalid_config_fails_the_first_check_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path / "fos.toml", "Driver=SQLite3;Database=/x.db", extra="[lease2]\n")
    result = fos("doctor", "--config", path, "--node", "m1", "--json")
    assert result.returncode == 1
    checks = by_name(result)
    assert (
        checks["config.valid"]["status"] == "fail"
        and "lease2 is not a known setting" in checks["config.valid"]["message"]
    )


def test_a_world_readable_config_with_a_password_fails_and_the_password_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "fos.toml"
    write(path, "Driver=SQLite3;Database=/x.db;Pwd=Hunter2-secret", mode=0o644)
    check = check_config_permissions(str(path))
    assert check.status == "fail" and "every local user can read it (mode 644)" in check.message
    assert "chmod 640" in check.fix and "Hunter2" not in check.message + check.fix
    path.chmod(0o640)
    assert check_config_permissions(str(path)).status == "pass"
    write(path, "Driver=SQLite3;Database=/x.db;Pwd=${FOS_DB_PASSWORD}", mode=0o644)
    assert check_config_permissions(str(path)).status == "pass"


def test_missing_network_capabilities_fail(tmp_path: Path) -> None:
    code = (
        "from agent.config import load; from agent.doctor_checks import check_capabilities; "
        f"c = check_capabilities(load({str(tmp_path / 'fos.toml')!r})); print(c.status, c.message)"
    )
    (tmp_path / "fos.toml").write_text(
        '[cluster]\nname = "dc"\ncommon_ip = "10.1.1.1/24"\n[[nodes]]\nname = "m1"\ninterface = "eth0"\n'
        '[database]\ndsn = "Driver=SQLite3;Database=/x.db"\n[lease]\nttl = 4\nheartbeat = 1\n'
    )
    held = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert held.stdout.startswith("pass"), held.stdout
    dropped = subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-net_admin,-net_raw",
            "--inh-caps",
            "-net_admin,-net_raw",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert dropped.stdout.startswith("fail") and "CAP_NET_ADMIN, CAP_NET_RAW" in dropped.stdout


async def test_the_database_checks_pass_on_a_ready_database_and_fail_without_schema_or_server(tmp_path: Path) -> None:
    ready = f"Driver=SQLite3;Database={tmp_path}/ready.db"
    s = SqlLeaseStore(ready, dialect="sqlite")
    await s.init_schema()
    await s.close()
    cfg = load(write(tmp_path / "a.toml", ready))
    store = SqlLeaseStore(ready, dialect="sqlite", call_timeout=5.0)
    try:
        checks = {c.name: c for c in await check_database(cfg, store)}
    finally:
        await store.close()
    assert checks["database.connection"].status == "pass"
    assert checks["database.clock"].status == "pass" and "s from this machine's" in checks["database.clock"].message
    assert checks["database.privileges"].status == "pass"
    empty = f"Driver=SQLite3;Database={tmp_path}/empty.db"
    cfg = load(write(tmp_path / "b.toml", empty))
    store = SqlLeaseStore(empty, dialect="sqlite", call_timeout=5.0)
    try:
        [missing] = await check_database(cfg, store)
    finally:
        await store.close()
    assert missing.status == "fail" and missing.name == "database.schema" and "init-db" in missing.fix
    gone = "Driver=PostgreSQL Unicode;Server=127.0.0.1;Port=1;Database=fos;Uid=fos;Pwd=x"
    cfg = load(write(tmp_path / "c.toml", gone))
    store = SqlLeaseStore(gone, dialect="postgresql", call_timeout=3.0)
    try:
        [unreachable] = await check_database(cfg, store)
    finally:
        await store.close()
    assert unreachable.status == "fail" and unreachable.name == "database.reachable"


async def test_a_login_that_may_do_ddl_is_a_warning(pg_server: DbServer, tmp_path: Path) -> None:
    dsn = pg_server.dsn()
    s = SqlLeaseStore(dsn, dialect="postgresql", call_timeout=5.0)
    await s.init_schema()
    try:
        checks = {c.name: c for c in await check_database(load(write(tmp_path / "a.toml", dsn.replace('"', ""))), s)}
    finally:
        await s.close()
    assert (
        checks["database.privileges"].status == "warn" and "docs/database-setup.md" in checks["database.privileges"].fix
    )


async def test_the_documented_agent_login_cannot_do_ddl_and_passes(
    server: DbServer,  # noqa: F811 - the imported fixture
    logins: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    schema = "fos" if server.kind == "postgresql" else None
    owner = SqlLeaseStore(logins["owner"], schema=schema, call_timeout=10)
    await owner.init_schema()
    await owner.ensure_cluster("dc")
    await owner.close()
    server.admin_sql(logins["grants"], database=logins["database"] if server.kind == "postgresql" else "mysql")
    agent = SqlLeaseStore(logins["agent"], schema=schema, call_timeout=10)
    try:
        checks = {c.name: c for c in await check_database(load(write(tmp_path / "a.toml", "Driver=X")), agent)}
    finally:
        await agent.close()
    assert checks["database.connection"].status == "pass"
    assert checks["database.privileges"].status == "pass", checks["database.privileges"].message
    owner = SqlLeaseStore(logins["owner"], schema=schema, call_timeout=10)
    try:
        checks = {c.name: c for c in await check_database(load(write(tmp_path / "a.toml", "Driver=X")), owner)}
    finally:
        await owner.close()
    assert checks["database.privileges"].status == "warn"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_the_app_health_check_runs_on_the_active_node_only(tmp_path: Path) -> None:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        extra = f'[application]\ncommand = "true"\n[application.health]\nhttp = "http://127.0.0.1:{port}/health"\n'
        cfg = load(write(tmp_path / "a.toml", "Driver=SQLite3;Database=/x.db", extra=extra))
        assert (await check_app(cfg, holder=True)).status == "pass"
        assert (await check_app(cfg, holder=False)).status == "skip"
    finally:
        httpd.shutdown()
        httpd.server_close()
    failing = await check_app(cfg, holder=True)
    assert failing.status == "fail" and "health check failed" in failing.message


@pytest.mark.parametrize(
    ("health", "status", "words"),
    [
        ('command = "exit 0"', "pass", "exited 0"),
        ('command = "echo broken >&2; exit 3"', "fail", "exited 3: broken"),
        ("tcp = 1", "fail", "health check failed"),
    ],
)
async def test_the_app_health_check_of_each_kind(tmp_path: Path, health: str, status: str, words: str) -> None:
    extra = f'[application]\ncommand = "true"\n[application.health]\n{health}\n'
    cfg = load(write(tmp_path / "a.toml", "Driver=SQLite3;Database=/x.db", extra=extra))
    check = await check_app(cfg, holder=True)
    assert check.status == status and words in check.message


def test_the_alias_must_resolve_to_the_common_ip(tmp_path: Path) -> None:
    base = '[cluster]\nname = "dc"\ncommon_ip = "10.1.2.3/24"\nalias_url = "http://{host}/"\n[[nodes]]\nname = "m1"\n'
    rest = 'interface = "lo"\n[database]\ndsn = "Driver=SQLite3;Database=/x.db"\n[lease]\nttl = 4\nheartbeat = 1\n'
    (tmp_path / "a.toml").write_text(base.format(host="10.1.2.3") + rest)
    assert check_alias_resolves(load(str(tmp_path / "a.toml"))).status == "pass"
    (tmp_path / "a.toml").write_text(base.format(host="localhost") + rest)
    bad = check_alias_resolves(load(str(tmp_path / "a.toml")))
    assert (
        bad.status == "fail" and "localhost resolves to 127.0.0.1" in bad.message and "not the common IP" in bad.message
    )


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], capture_output=True, check=True)


def make_cert(d: Path, name: str, san: str, days: int, ca: bool = True) -> tuple[str, str]:
    key, pem = str(d / f"{name}.key"), str(d / f"{name}.pem")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]
    if not ca:  # self-signed
        openssl(
            "req",
            "-x509",
            *curve,
            "-out",
            pem,
            "-days",
            str(days),
            "-subj",
            "/CN=x",
            "-addext",
            f"subjectAltName={san}",
        )
        return key, pem
    csr = str(d / f"{name}.csr")
    openssl("req", *curve, "-out", csr, "-subj", "/CN=x")
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        str(d / "ca.pem"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        pem,
        "-days",
        str(days),
        "-extfile",
        str(ext),
    )
    return key, pem


def serve_tls(key: str, pem: str) -> tuple[socket.socket, threading.Thread]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError), context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(
    ("san", "days", "ca", "status", "words"),
    [
        ("DNS:localhost", 365, True, "pass", "valid for 365 more days"),
        ("DNS:localhost", 10, True, "warn", "expires in 10 days"),
        ("DNS:localhost", 365, False, "fail", "self-signed"),
        ("DNS:other.example", 365, True, "fail", "mismatch"),
    ],
)
def test_the_alias_certificate_must_be_ca_signed_for_the_name_and_not_expiring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, san: str, days: int, ca: bool, status: str, words: str
) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(tmp_path / "ca.key"),
        "-out",
        str(tmp_path / "ca.pem"),
        "-days",
        "3650",
        "-subj",
        "/CN=fos test CA",
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the test CA is the only trusted one
    key, pem = make_cert(tmp_path, "leaf", san, days, ca)
    listener, _ = serve_tls(key, pem)
    try:
        port = listener.getsockname()[1]
        (tmp_path / "a.toml").write_text(
            f'[cluster]\nname = "dc"\naddress_driver = "none"\nalias_url = "https://localhost:{port}/"\n'
            '[[nodes]]\nname = "m1"\n[database]\ndsn = "Driver=SQLite3;Database=/x.db"\n'
            "[lease]\nttl = 4\nheartbeat = 1\n"
        )
        check = check_alias_certificate(load(str(tmp_path / "a.toml")))
    finally:
        listener.close()
    assert check.status == status, check.message
    assert words in check.message


# ---- on the namespace test bed: network and replication ----------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIP = f"{SUBNET}.100"


def doctor_in(host: Host, config: str, node: str, path: str | None = None) -> tuple[int, dict[str, Any]]:
    """`fos doctor --json` run as node; path: the PATH it runs with."""
    env = ["/usr/bin/env", f"PATH={path}"] if path else []
    out = subprocess.run(
        host.argv([*env, *FOS, "doctor", "--config", config, "--node", node, "--json"]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.stdout, out.stderr
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


@pytest.mark.netns
async def test_network_checks_find_a_host_answering_for_the_common_ip_and_a_wrong_interface(
    lan: Lan, tmp_path: Path
) -> None:
    m1, m2, m3 = lan.add_host("m1"), lan.add_host("m2"), lan.add_host("m3")
    dsn = f"Driver=SQLite3;Database={tmp_path}/lease.db"
    store = SqlLeaseStore(dsn, dialect="sqlite", call_timeout=5.0)
    await store.init_schema()
    path = tmp_path / "fos.toml"
    text = (
        f'[cluster]\nname = "dc"\ncommon_ip = "{VIP}/24"\n'
        f'[[nodes]]\nname = "m1"\ninterface = "eth0"\nurl = "http://{m1.ip}:8080/"\n'
        f'[[nodes]]\nname = "m2"\ninterface = "eth0"\nurl = "http://{m2.ip}:8080/"\n'
        f'[database]\ndsn = "{dsn}"\n[lease]\nttl = 4\nheartbeat = 1\n[http]\nlisten = ""\n'
    )
    path.write_text(text)
    config = str(path)
    try:
        code, checks = doctor_in(m1, config, "m1")
        assert checks["interface"]["status"] == "pass"
        assert checks["common_ip.free"]["status"] == "pass"
        assert checks["peer.m2.mac"]["status"] == "pass" and m2.mac in checks["peer.m2.mac"]["message"]
        assert checks["capabilities"]["status"] == "pass"
        assert checks["peer.m2.agent"]["status"] == "warn"  # no agent ran: a warning, not a failure
        assert code == 0, checks

        holder = m3.popen(
            [
                sys.executable,
                "-m",
                "tests.support.nsbind",
                "hold",
                "--address",
                f"{VIP}/24",
                "--lifetime",
                "30",
                "--seconds",
                "60",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None and json.loads(holder.stdout.readline())["ok"]
        code, checks = doctor_in(m1, config, "m1")
        assert code == 1
        assert checks["common_ip.free"]["status"] == "fail" and m3.mac in checks["common_ip.free"]["message"]
        m3.stop_processes()

        m1.run("ip", "addr", "add", f"{VIP}/24", "dev", "eth0")  # bound here without the lease: a leftover
        code, checks = doctor_in(m1, config, "m1")
        assert (
            checks["common_ip.free"]["status"] == "fail"
            and "does not hold the lease" in checks["common_ip.free"]["message"]
        )
        assert (await store.try_acquire("dc", "m1", 60_000)).acquired
        code, checks = doctor_in(m1, config, "m1")
        assert (
            checks["common_ip.free"]["status"] == "pass"
            and "this node holds the lease" in checks["common_ip.free"]["message"]
        )

        path.write_text(text.replace('interface = "eth0"', 'interface = "eth9"', 1))
        code, checks = doctor_in(m1, config, "m1")
        assert code == 1 and checks["interface"]["status"] == "fail" and "eth9" in checks["interface"]["message"]
    finally:
        await store.close()


@pytest.fixture
def bed(lan: Lan) -> Iterator[ReplicationBed]:
    with tempfile.TemporaryDirectory(prefix="fos-doctor-") as work:
        os.chmod(work, 0o755)
        b = ReplicationBed(lan, work)
        try:
            yield b
        finally:
            b.close()


def install_receiver_needing_env(bed: ReplicationBed, env_file: str | None = None) -> str:
    """m2's forced command with a config whose DSN needs ${FOS_DOCTOR_DB} (unset for sshd's child), with
    --env-file env_file if given; returns the path of an env file that sets it."""
    env_config = os.path.join(bed.work, "env.toml")
    with open(bed.config) as f:
        text = f.read()
    with open(env_config, "w") as f:
        f.write(text.replace(bed.dsn, "Driver=SQLite3;Database=${FOS_DOCTOR_DB}"))
    receive = f"{bed.fos_argv_text()} mirror receive --config {env_config} --node m2"
    if env_file:
        receive += f" --env-file {env_file}"
    with open(bed.sshd["m2"].authorized_keys, "w") as f:
        f.write(f'command="{receive}",restrict {bed.public_key}\n')
    path = os.path.join(bed.work, "fos.env")
    with open(path, "w") as f:
        f.write(f"FOS_DOCTOR_DB={bed.dsn.split('Database=')[1].split(';')[0]}\n")
    return path


@pytest.mark.netns
async def test_replication_checks_ssh_and_the_forced_command_and_a_healthy_pair_exits_0(bed: ReplicationBed) -> None:
    store = SqlLeaseStore(bed.dsn, dialect="sqlite", call_timeout=5.0)
    await store.init_schema()
    try:
        assert (await store.try_acquire("rp", "m1", 60_000)).acquired
        await store.record_node("rp", "m2", "standby", None, None, "test")
        host = bed.fs["m1"].host
        code, checks = doctor_in(host, bed.config, "m1")
        assert checks["replication.rsync"]["status"] == "pass"
        assert checks["replication.m2"]["status"] == "pass", checks["replication.m2"]
        assert checks["peer.m2.agent"]["status"] == "pass"
        assert code == 0, [c for c in checks.values() if c["status"] != "pass"]

        bed.write_config(ssh_port=2299)  # nobody listens there
        code, checks = doctor_in(host, bed.config, "m1")
        assert code == 1 and checks["replication.m2"]["status"] == "fail"
        assert "failed" in checks["replication.m2"]["message"] and "known_hosts" in checks["replication.m2"]["fix"]

        bed.write_config()
        bed.sshd["m2"].replace_keys(bed.public_key)  # the key without the forced command
        code, checks = doctor_in(host, bed.config, "m1")
        assert code == 1 and checks["replication.m2"]["status"] == "fail"
        assert "fos mirror receive did not answer" in checks["replication.m2"]["message"]
        assert 'command="fos mirror receive' in checks["replication.m2"]["fix"]

        # The forced command runs without the agent's environment: a DSN needing ${VAR} fails there, and the
        # doctor says so (not "install the forced command"); --env-file makes the same set-up pass.
        env_file = install_receiver_needing_env(bed)
        code, checks = doctor_in(host, bed.config, "m1")
        assert code == 1 and "cannot read the lease" in checks["replication.m2"]["message"], checks["replication.m2"]
        assert "/etc/fos/fos.env" in checks["replication.m2"]["fix"]
        install_receiver_needing_env(bed, env_file)
        code, checks = doctor_in(host, bed.config, "m1")
        assert checks["replication.m2"]["status"] == "pass", checks["replication.m2"]
        assert "lease read: holder m1" in checks["replication.m2"]["message"]

        code, checks = doctor_in(host, bed.config, "m1", path="/nonexistent")
        assert code == 1 and checks["replication.rsync"]["status"] == "fail"
    finally:
        await store.close()
