"""The checks of `fos doctor`, each a function returning Check results (pass / warn / fail / skip with the fix).

The pure decisions (secret_in_config, capabilities_missing, compare_macs, peers_seen, certificate_verdict) are
separate from the probing so they can be table-tested; the probing parts are tested on the namespace test bed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import socket
import ssl
import stat
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lease import NodeRecord, SchemaMissing, SqlLeaseStore, StoreAuthError, StoreError, StoreUnavailable

from .config import Config, NodeConfig, peer_host
from .replication import PROBE_COMMAND, run_command, ssh_command

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
CERT_WARN_DAYS = 30
CLOCK_WARN_S = 2.0
SEEN_HEARTBEATS = 3  # like `fos status`: a peer row older than this many heartbeats is not seen recently


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


# ---- configuration ---------------------------------------------------------------------------------------

_DSN_SECRET = re.compile(r"(?i)(?:^|;)\s*(?:pwd|password)\s*=\s*(?!\$\{)[^;\s]")


def secret_in_config(data: dict[str, Any]) -> str | None:
    """The key of a secret written literally in the parsed TOML document (not a ${VAR}), or None."""
    dsn = data.get("database", {}).get("dsn")
    if isinstance(dsn, str) and _DSN_SECRET.search(dsn):
        return "database.dsn"
    url = data.get("application", {}).get("health", {}).get("http")
    if isinstance(url, str):
        try:
            if urlsplit(url).password:
                return "application.health.http"
        except ValueError:
            pass
    return None


def check_config_permissions(path: str) -> Check:
    """A config file holding a secret must not be world-readable (nor world-writable, ever)."""
    name = "config.permissions"
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return Check(name, FAIL, f"{path} cannot be read: {exc}", "fix the file first (see config.valid)")
    if mode & stat.S_IWOTH:
        return Check(name, FAIL, f"{path} is world-writable", f"chmod o-w {path}")
    key = secret_in_config(data)
    if key and mode & stat.S_IROTH:
        return Check(
            name,
            FAIL,
            f"{path} holds a secret in {key} and every local user can read it (mode {stat.S_IMODE(mode):o})",
            f"chmod 640 {path} (owner root, group of the fos user), or use ${{VAR}} from the environment",
        )
    if key:
        return Check(name, PASS, f"{path} holds a secret in {key} and is not world-readable")
    return Check(name, PASS, f"{path} holds no literal secret")


# ---- capabilities ----------------------------------------------------------------------------------------


def capabilities_missing(cap_eff_hex: str) -> list[str]:
    """Which of CAP_NET_ADMIN, CAP_NET_RAW the effective set (CapEff of /proc/PID/status, hex) lacks."""
    eff = int(cap_eff_hex, 16)
    return [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW)) if not eff >> bit & 1]


def check_capabilities(cfg: Config, status_path: str = "/proc/self/status") -> Check:
    name = "capabilities"
    if cfg.address_driver != "netlink":
        return Check(name, SKIP, "no common IP to bind (address_driver = 'none')")
    with open(status_path) as f:
        cap_eff = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    missing = capabilities_missing(cap_eff)
    if missing:
        return Check(
            name,
            FAIL,
            f"this process lacks {', '.join(missing)}: the agent could not bind the common IP or probe it",
            "run fos as root, or with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW (examples/fos.service)",
        )
    return Check(name, PASS, "CAP_NET_ADMIN and CAP_NET_RAW are held")


# ---- database --------------------------------------------------------------------------------------------


async def db_clock_offset(store: SqlLeaseStore, timeout: float) -> float:
    """The database's UTC now minus this machine's, in seconds (half the round trip is allowed for)."""

    async def op(conn: Any) -> float:
        t0 = time.time()
        _, rows = await conn.execute(f"SELECT {store.dialect.now}")
        t1 = time.time()
        value = rows[0][0]
        at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        return at.timestamp() - (t0 + t1) / 2

    return await store._call(op, timeout)


_DDL_PROBE = {
    "postgresql": "SELECT has_schema_privilege(current_schema(), 'CREATE') OR has_database_privilege("
    "current_database(), 'CREATE')",
    "mssql": "SELECT HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE', 'CREATE TABLE')",
    "mysql": "SELECT (SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'CREATE' "
    "AND GRANTEE = {g}) + (SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES WHERE PRIVILEGE_TYPE = "
    "'CREATE' AND GRANTEE = {g} AND DATABASE() LIKE TABLE_SCHEMA)".format(
        g="CONCAT(\"'\", SUBSTRING_INDEX(CURRENT_USER(), '@', 1), \"'@'\", SUBSTRING_INDEX(CURRENT_USER(), '@', -1), "
        '"\'")'
    ),
}


async def can_do_ddl(store: SqlLeaseStore, timeout: float) -> bool | None:
    """Whether the login may create tables (None: the dialect has no logins to ask about, SQLite)."""
    query = _DDL_PROBE.get(store.dialect.name)
    if query is None:
        return None

    async def op(conn: Any) -> bool:
        _, rows = await conn.execute(query)
        return bool(rows and rows[0][0] not in (None, 0, False, "0", "f"))

    return await store._call(op, timeout)


async def check_database(cfg: Config, store: SqlLeaseStore) -> list[Check]:
    """Reachable, login accepted, schema current (preflight), clock offset, and the login's privileges."""
    timeout = max(cfg.call_timeout, 5.0)
    try:
        await store.preflight(cfg.cluster, timeout=timeout)
    except StoreAuthError as exc:
        return [Check("database.login", FAIL, f"the database refused the login: {exc}", "fix Uid/Pwd in the DSN")]
    except SchemaMissing as exc:
        return [Check("database.schema", FAIL, f"{exc}", "run fos init-db with an owner login")]
    except StoreUnavailable as exc:
        return [Check("database.reachable", FAIL, f"{exc}", "check the DSN's server and port, and the firewall")]
    except StoreError as exc:
        return [Check("database.schema", FAIL, f"{exc}", "see the message; fos init-db creates or upgrades")]
    out = [Check("database.connection", PASS, f"reachable, login accepted, schema current ({store.dialect.name})")]
    try:
        offset = await db_clock_offset(store, timeout)
        status = WARN if abs(offset) > CLOCK_WARN_S else PASS
        out.append(
            Check(
                "database.clock",
                status,
                f"the database clock is {offset:+.2f}s from this machine's (leases use the database clock only; "
                "ages shown by fos mirror status use this machine's)",
                "run NTP (chrony) on this machine and on the database server" if status == WARN else "",
            )
        )
        ddl = await can_do_ddl(store, timeout)
    except StoreError as exc:
        return [*out, Check("database.privileges", FAIL, f"could not ask: {exc}")]
    if ddl is None:
        out.append(Check("database.privileges", PASS, "SQLite has no logins: the file's permissions decide"))
    elif ddl:
        out.append(
            Check(
                "database.privileges",
                WARN,
                "the login may create or drop tables: the agent needs only SELECT/INSERT/UPDATE on the fos tables",
                "use a separate agent login with the grants of docs/database-setup.md",
            )
        )
    else:
        out.append(Check("database.privileges", PASS, "the login cannot do DDL"))
    return out


def peers_seen(records: list[NodeRecord], me: str, names: list[str], heartbeat: float) -> list[Check]:
    """One check per other node: its agent wrote its row within SEEN_HEARTBEATS heartbeats."""
    rows = {r.node: r for r in records}
    out = []
    for name in names:
        if name == me:
            continue
        r = rows.get(name)
        if r is None:
            out.append(Check(f"peer.{name}.agent", WARN, f"node {name}'s agent never ran", f"start fos on {name}"))
        elif r.role == "stopped" or r.last_seen_age_s is None or r.last_seen_age_s > SEEN_HEARTBEATS * heartbeat:
            age = "-" if r.last_seen_age_s is None else f"{r.last_seen_age_s:.0f}s"
            out.append(
                Check(
                    f"peer.{name}.agent",
                    WARN,
                    f"node {name}'s agent was last seen {age} ago (role {r.role}): no fail-over to it now",
                    f"start fos on {name} (systemctl start fos)",
                )
            )
        else:
            out.append(
                Check(f"peer.{name}.agent", PASS, f"node {name}'s agent is {r.role}, seen {r.last_seen_age_s:.1f}s ago")
            )
    return out


# ---- network ---------------------------------------------------------------------------------------------


def compare_macs(ours: str, peers: dict[str, str | None]) -> list[Check]:
    """The other nodes answer with MACs other than ours (two machines with different NICs)."""
    out = []
    for name, mac in peers.items():
        if mac is None:
            out.append(Check(f"peer.{name}.mac", WARN, f"node {name} did not answer an ARP/ND probe", "is it up?"))
        elif mac.lower() == ours.lower():
            out.append(
                Check(
                    f"peer.{name}.mac",
                    FAIL,
                    f"node {name} answers with our own MAC {mac}: cloned VMs share a NIC address",
                    f"give {name} its own MAC address",
                )
            )
        else:
            out.append(Check(f"peer.{name}.mac", PASS, f"node {name} has MAC {mac}, ours is {ours}"))
    return out


def resolve_ips(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(i[4][0])) for i in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError, ValueError):
        return set()


def check_alias_resolves(cfg: Config, resolve: Callable[[str], set[str]] = resolve_ips) -> Check:
    name = "alias.dns"
    host = urlsplit(cfg.alias_url).hostname if cfg.alias_url else None
    if not host or cfg.common_ip is None:
        return Check(name, SKIP, "no cluster.alias_url (or no common IP) to check")
    found = resolve(host)
    ip = str(cfg.common_ip.ip)
    if ip in found:
        return Check(name, PASS, f"{host} resolves to the common IP {ip}")
    shown = ", ".join(sorted(found)) or "nothing"
    return Check(name, FAIL, f"{host} resolves to {shown}, not the common IP {ip}", f"add {host} -> {ip} to the DNS")


def certificate_verdict(host: str, error: str | None, not_after: datetime | None, now: datetime) -> Check:
    """The alias's certificate: verified for the name by a trusted CA (no self-signed), not expiring soon."""
    name = "alias.certificate"
    if error is not None:
        return Check(
            name,
            FAIL,
            f"the certificate of {host} is not valid: {error}",
            f"get a certificate for {host} signed by a CA the clients trust (self-signed ones are refused)",
        )
    assert not_after is not None
    days = (not_after - now).total_seconds() / 86400
    if days < CERT_WARN_DAYS:
        return Check(name, WARN, f"the certificate of {host} expires in {days:.0f} days", "renew it now")
    return Check(name, PASS, f"the certificate of {host} is valid for {days:.0f} more days")


def fetch_certificate(host: str, port: int, timeout: float = 5.0) -> tuple[str | None, datetime | None]:
    """Verify host's TLS certificate with the system's trust store (SSL_CERT_FILE honoured): (error, notAfter)."""
    context = ssl.create_default_context()
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc), None
    except (OSError, ssl.SSLError) as exc:
        return f"no TLS connection to {host}:{port} ({exc})", None
    if not cert or "notAfter" not in cert:
        return f"{host}:{port} sent no certificate", None
    not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), UTC)
    return None, not_after


def check_alias_certificate(cfg: Config) -> Check:
    parts = urlsplit(cfg.alias_url) if cfg.alias_url else None
    if parts is None or parts.scheme != "https" or not parts.hostname:
        return Check("alias.certificate", SKIP, "cluster.alias_url is not an https URL")
    error, not_after = fetch_certificate(parts.hostname, parts.port or 443)
    return certificate_verdict(parts.hostname, error, not_after, datetime.now(UTC))


# ---- replication -----------------------------------------------------------------------------------------


async def check_replication(cfg: Config, me: str) -> list[Check]:
    """rsync present; for each other node: ssh with the mirror key works and answers with the forced command."""
    rep = cfg.replication
    if not rep.enabled:
        return [Check("replication", SKIP, "replication.paths is empty")]
    if shutil.which("rsync") is None:
        return [Check("replication.rsync", FAIL, "rsync is not installed", "apt-get install rsync")]
    out = [Check("replication.rsync", PASS, f"rsync at {shutil.which('rsync')}")]
    peers = [n for n in cfg.nodes if n.name != me]
    results = await asyncio.gather(*(_probe_peer(rep_node, cfg) for rep_node in peers))
    out.extend(results)
    return out


async def _probe_peer(node: NodeConfig, cfg: Config) -> Check:
    name = f"replication.{node.name}"
    host = peer_host(node)
    argv = [*ssh_command(cfg.replication), host, PROBE_COMMAND]
    try:
        code, stdout, stderr = await run_command(argv, 20)
    except FileNotFoundError:
        return Check(name, FAIL, "ssh is not installed", "apt-get install openssh-client")
    if code == 0 and f"node {node.name} ready" in stdout:
        lease = stdout.partition("lease read: ")[2].strip()
        return Check(name, PASS, f"ssh to {host} works and runs fos mirror receive (its lease read: {lease})")
    err = " ".join(stderr.split())[-200:]
    if code == 2 or "lease database cannot be asked" in err:  # the forced command itself cannot read the lease
        return Check(
            name,
            FAIL,
            f"fos mirror receive on {node.name} answers but cannot read the lease: {err}",
            f"on {node.name}, put the DSN's variables (FOS_DB_PASSWORD=...) in /etc/fos/fos.env, which the forced "
            "command reads (or add --env-file PATH to its command= in authorized_keys), and check the database "
            "is reachable from there",
        )
    if code == 255:
        return Check(
            name,
            FAIL,
            f"ssh {cfg.replication.ssh_user}@{host} -p {cfg.replication.ssh_port} failed: {err}",
            f"install the mirror key's public half on {node.name} and its host key in known_hosts",
        )
    return Check(
        name,
        FAIL,
        f"ssh to {host} works but fos mirror receive did not answer ({err or stdout.strip()[:100]})",
        f"prefix the key in {node.name}'s authorized_keys with "
        f'command="fos mirror receive --config {cfg.path}",restrict',
    )
