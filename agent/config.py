"""The cluster file: one TOML file, the same on every node. Parsing and validation only, no I/O beyond reading it
(and, in check_listen, resolving http.listen's host name).

Every problem is reported as a ConfigError whose one-line message names the field and the fix, and never shows
a secret. Unsafe timing is refused (never silently adjusted): see timing.py for the rules. Each default and each
bound is declared once, on the dataclass field below; the parser reads them from there (config_values.py reads
single values).
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lease.dialects import ALIASES, DIALECTS
from netops.binder import DEFAULT_PROBE_TIMEOUT_S

from .config_notify import NotifyConfig, parse_http_token, parse_notify
from .config_values import (
    ACCOUNT,
    DAY,
    DEFERRED_SECRET,
    SQL_IDENTIFIER,
    TTL_MAX_S,
    ConfigError,
    TableReader,
    command_value,
    default_of,
    expand_dsn,
    expand_env,
    is_secret_key,
    name_value,
    parse_common_ip,
    parse_listen,
    redact_url,
    scrub_url,
    shown,
)

__all__ = [
    "DEFERRED_SECRET",
    "AnnounceConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "HealthConfig",
    "LeaseConfig",
    "NodeConfig",
    "PolicyConfig",
    "ReplicationConfig",
    "check_listen",
    "default_of",
    "expand_dsn",
    "expand_env",
    "is_secret_key",
    "load",
    "parse",
    "parse_common_ip",
    "parse_listen",
    "redact_url",
    "scrub_url",
]


def _check_mode(app: AppConfig) -> None:
    """application.mode: a known value; "warm" needs an application and a health check (a warm node competes for
    the lease only while its running application answers healthy)."""
    if app.mode not in APP_MODES:
        raise ConfigError(f"application.mode = {shown('', app.mode)} is unknown: use 'cold' or 'warm'")
    if app.mode != "warm":
        return
    if app.command is None and app.start is None:
        raise ConfigError(
            "application.mode = 'warm' needs an application: set application.command (or start and stop), "
            "or use mode = 'cold'"
        )
    if not app.health.enabled:
        raise ConfigError(
            "application.mode = 'warm' needs application.health (http, tcp or command): a warm node competes only "
            "while its application answers healthy"
        )


def _bounded(default: Any, low: float = 0.0, high: float = DAY, low_ok: bool = False, fix: str = "") -> Any:
    """A numeric field: its default and its accepted range (low exclusive unless low_ok, high inclusive); fix
    replaces the generic out-of-range message."""
    return field(default=default, metadata={"low": low, "high": high, "low_ok": low_ok, "fix": fix})


@dataclass(frozen=True)
class NodeConfig:
    name: str
    interface: str = ""
    url: str | None = None
    priority: int = _bounded(0, low=-1_000_000, high=1_000_000, low_ok=True)  # fail-back: higher is preferred


def peer_host(node: NodeConfig) -> str:
    """Where a node is reached (ssh for replication, wake-up hints): the host of its url, else its name."""
    host = urlsplit(node.url).hostname if node.url else None
    return host or node.name


@dataclass(frozen=True)
class HealthConfig:
    http: str | None = None
    tcp: int | None = _bounded(None, low=1, high=65535, low_ok=True, fix="is not a port: use 1-65535")
    command: str | None = None
    interval: float = _bounded(2.0, high=3600)
    timeout: float = _bounded(1.0, high=3600)
    failures: int = _bounded(3, low=1, high=1000, low_ok=True)
    start_grace: float = _bounded(30.0)

    @property
    def enabled(self) -> bool:
        return bool(self.http or self.tcp or self.command)


APP_MODES = ("cold", "warm")


@dataclass(frozen=True)
class AppConfig:
    command: str | list[str] | None = None
    start: str | list[str] | None = None
    stop: str | list[str] | None = None
    stop_timeout: float = _bounded(10.0)
    health: HealthConfig = field(default_factory=HealthConfig)
    hold_off: float = _bounded(30.0, low_ok=True)  # after stepping down for an app failure, do not re-acquire
    user: str | None = None  # run the application as this user (agent/app.py), None: as the agent
    group: str | None = None  # and this group, None: the user's primary group
    mode: str = "cold"  # "warm": the application runs on every node (agent/warm.py), only the common IP moves


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    dialect: str | None = None
    call_timeout: float | None = _bounded(None, high=3600)  # default: heartbeat / 2
    schema: str | None = None  # None: the dialect's default (dbo on mssql, public on postgresql)


@dataclass(frozen=True)
class LeaseConfig:
    ttl: float = _bounded(180.0, high=TTL_MAX_S)
    heartbeat: float = _bounded(10.0)
    fence_margin: float = _bounded(0.2, high=3600)
    min_hold: float = _bounded(5.0, low_ok=True)  # minimum time between two transitions of one node (no flapping)


@dataclass(frozen=True)
class AnnounceConfig:
    count: int = _bounded(3, low=1, high=100, low_ok=True)
    interval: float = _bounded(0.2, high=60)
    refresh: float = _bounded(0.0, low_ok=True)  # seconds between gratuitous ARP refreshes while active; 0 = off


FAILBACK_MODES = ("manual", "auto")


@dataclass(frozen=True)
class PolicyConfig:
    """Fail-back, maintenance reminders and anti-flap ([cluster] failback*, [maintenance], [flap])."""

    failback: str = "manual"  # "auto": the highest-priority node takes the role back by a switchover
    failback_delay: float = _bounded(300.0, low_ok=True)  # healthy as standby this long before it does
    remind_after: float = _bounded(14400.0, high=30 * DAY)  # maintenance on longer than this: a reminder event
    max_takeovers: int = _bounded(3, low=1, high=1000, low_ok=True)  # more within flap_window: failover off
    flap_window: float = _bounded(3600.0, high=30 * DAY)


@dataclass(frozen=True)
class ReplicationConfig:
    """`fos mirror` and scheduled replication (agent/replication.py): rsync over ssh from the lease holder."""

    paths: tuple[str, ...] = ()  # absolute directories and files of the installation, copied to the same paths
    excludes: tuple[str, ...] = ()  # rsync patterns that stay node-specific (logs, pid files, local config)
    interval: float = _bounded(0.0, low_ok=True)  # seconds between scheduled runs while active; 0 = on demand only
    ssh_user: str = "fos"
    ssh_key: str | None = None  # private key file; None: ssh's default identities
    ssh_port: int = _bounded(22, low=1, high=65535, low_ok=True, fix="is not a port: use 1-65535")
    known_hosts: str | None = None  # the peers' host keys; None: ssh's default known_hosts files
    max_delete: int = _bounded(100, low=0, high=10_000_000, low_ok=True)  # 0: never delete on the peer
    sentinel: str = ".fos-sentinel"  # deletions only when this file exists in a source directory
    stale_after: float = _bounded(
        DAY, high=30 * DAY, low_ok=True
    )  # a copy older than this is reported stale; 0 = never
    timeout: float = _bounded(3600.0)  # seconds one rsync run may take before it is stopped

    @property
    def enabled(self) -> bool:
        return bool(self.paths)


@dataclass(frozen=True)
class Config:
    path: str
    cluster: str
    common_ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
    nodes: tuple[NodeConfig, ...]
    database: DatabaseConfig
    address_driver: str = "netlink"
    alias_url: str | None = None
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    app: AppConfig = field(default_factory=AppConfig)
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    http_listen: str | None = "0.0.0.0:8470"  # None: no HTTP endpoint
    probe_conflict: bool = True
    probe_timeout: float = _bounded(DEFAULT_PROBE_TIMEOUT_S, high=60)
    # UDP port of the wake-up hints (agent/wake.py), the HTTP port's number by default; 0: no hints
    wake_port: int = _bounded(8470, high=65535, low_ok=True, fix="is not a port: use 1-65535, or 0 to turn hints off")
    unset_env: tuple[str, ...] = ()  # ${VAR}s replaced by DEFERRED_SECRET (only when parsed with defer_env)
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # [notify] (agent/config_notify.py)
    secrets_unset: tuple[tuple[str, str], ...] = ()  # (key, VAR) of notify/http.token secrets: require_secrets()
    # http.token: GET /, /status and /metrics need it (agent/page.py)
    http_token: str | None = field(default=None, repr=False)

    @property
    def call_timeout(self) -> float:
        return self.database.call_timeout if self.database.call_timeout is not None else self.lease.heartbeat / 2

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of http.listen, host without brackets ('' = every address); None when it is off."""
        return None if self.http_listen is None else parse_listen(self.http_listen)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"node {name!r} is not in [[nodes]] of {self.path}: use one of {self.node_names()}")

    def node_names(self) -> str:
        return ", ".join(n.name for n in self.nodes)


def check_listen(cfg: Config) -> None:
    """http.listen's host is a literal IP or a name this machine resolves (at check and start time, before
    anything is started); a ConfigError otherwise."""
    address = cfg.http_address
    if address is None or not address[0]:
        return
    host, port = address
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ConfigError(
            f"http.listen = {cfg.http_listen!r}: the host {host!r} does not resolve on this machine: use an IP "
            "address, or a name in /etc/hosts"
        ) from None


def load(path: str, env: dict[str, str] | None = None, defer_env: bool = False) -> Config:
    """Read and parse the cluster file; every failure is a one-line ConfigError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass --config with the cluster file's path") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse(data, path, env, defer_env=defer_env)


def parse(
    data: dict[str, Any], path: str = "<config>", env: dict[str, str] | None = None, defer_env: bool = False
) -> Config:
    """Validate the TOML document into a Config. defer_env: unset ${VAR}s in the DSN become a placeholder
    (listed in Config.unset_env) instead of an error, for checks that never connect."""
    top = TableReader(data, "")
    cl = top.table("cluster")
    cluster = name_value(cl.get("name", str, required=True), "cluster.name")
    driver = cl.get("address_driver", str, default_of(Config, "address_driver"))
    if driver not in ("netlink", "none"):
        raise ConfigError(f"cluster.address_driver = {shown('', driver)} is unknown: use 'netlink' or 'none'")
    ip_text = cl.get("common_ip", str)
    common_ip = parse_common_ip(ip_text, cl.get("netmask", str), "cluster.common_ip") if ip_text else None
    if common_ip is None and driver == "netlink":
        raise ConfigError("cluster.common_ip is missing: set it, or set cluster.address_driver = 'none'")
    alias_url = cl.url("alias_url")
    probe = cl.get("probe_conflict", bool, default_of(Config, "probe_conflict"))
    probe_timeout = cl.number(Config, "probe_timeout")
    wake_port = cl.integer(Config, "wake_port")
    failback = cl.get("failback", str, default_of(PolicyConfig, "failback"))
    if failback not in FAILBACK_MODES:
        raise ConfigError(f"cluster.failback = {shown('', failback)} is unknown: use 'manual' or 'auto'")
    failback_delay = cl.number(PolicyConfig, "failback_delay")
    cl.done()

    nodes = _nodes(top, driver)

    db = top.table("database")
    dsn, unset = expand_dsn(db.get("dsn", str, required=True), env, defer_env)
    dialect = db.get("dialect", str)
    if dialect is not None and ALIASES.get(dialect.lower(), dialect.lower()) not in DIALECTS:
        raise ConfigError(
            f"database.dialect = {shown('', dialect)} is unknown: use one of {', '.join(sorted(DIALECTS))}, "
            "or omit it to detect the database from the connection"
        )
    database = DatabaseConfig(
        dsn=dsn,
        dialect=dialect,
        call_timeout=db.number(DatabaseConfig, "call_timeout"),
        schema=db.text(
            "schema", SQL_IDENTIFIER, "an SQL identifier", "use letters, digits and '_' (1-63, not first a digit)"
        ),
    )
    db.done()

    ls = top.table("lease")
    lease = LeaseConfig(**{k: ls.number(LeaseConfig, k) for k in ("ttl", "heartbeat", "fence_margin", "min_hold")})
    ls.done()

    ap = top.table("application")
    hr = ap.table("health")
    health = HealthConfig(
        http=hr.url("http", credentials_ok=True),
        tcp=hr.integer(HealthConfig, "tcp"),
        command=hr.get("command", str),
        interval=hr.number(HealthConfig, "interval"),
        timeout=hr.number(HealthConfig, "timeout"),
        failures=hr.integer(HealthConfig, "failures"),
        start_grace=hr.number(HealthConfig, "start_grace"),
    )
    hr.done()
    if sum(x is not None for x in (health.http, health.tcp, health.command)) > 1:
        raise ConfigError("application.health has more than one of http, tcp, command: keep exactly one")
    account_fix = "give a user or group name (or a numeric id) of this machine, or remove the key"
    app = AppConfig(
        command=command_value(ap, "command"),
        start=command_value(ap, "start"),
        stop=command_value(ap, "stop"),
        stop_timeout=ap.number(AppConfig, "stop_timeout"),
        health=health,
        hold_off=ap.number(AppConfig, "hold_off"),
        user=ap.text("user", ACCOUNT, "a user name", account_fix),
        group=ap.text("group", ACCOUNT, "a group name", account_fix),
        mode=ap.get("mode", str, default_of(AppConfig, "mode")),
    )
    ap.done()
    _check_mode(app)
    if app.command is not None and (app.start is not None or app.stop is not None):
        raise ConfigError("application has command and start/stop: use command (supervised) or start and stop")
    if app.command is None and (app.start is None) != (app.stop is None):
        raise ConfigError("application needs both start and stop (or a supervised command): add the missing one")

    an = top.table("announce")
    announce = AnnounceConfig(
        count=an.integer(AnnounceConfig, "count"),
        interval=an.number(AnnounceConfig, "interval"),
        refresh=an.number(AnnounceConfig, "refresh"),
    )
    an.done()

    replication = _replication(top.table("replication"))
    mt, fl = top.table("maintenance"), top.table("flap")
    policy = PolicyConfig(
        failback=failback,
        failback_delay=failback_delay,
        remind_after=mt.number(PolicyConfig, "remind_after"),
        max_takeovers=fl.integer(PolicyConfig, "max_takeovers"),
        flap_window=fl.number(PolicyConfig, "window", "flap_window"),
    )
    mt.done()
    fl.done()

    hp = top.table("http")
    listen = hp.get("listen", str, default_of(Config, "http_listen")) or None  # "" turns the endpoint off
    if listen is not None:
        parse_listen(listen)
    http_token, token_unset = parse_http_token(hp, env)
    hp.done()
    notify, notify_unset = parse_notify(top.table("notify"), env)
    top.done()

    if health.interval < health.timeout:
        raise ConfigError(
            f"application.health.timeout = {health.timeout:g} is longer than application.health.interval = "
            f"{health.interval:g}: lower the timeout"
        )
    if app.mode == "warm" and common_ip is not None and health.http:
        # A warm standby competes only while ITS application answers: through the common IP every node would
        # see the active node's application, and a standby whose own app is dead would take over and serve nothing.
        host = urlsplit(health.http).hostname or ""
        if host.strip("[]") == str(common_ip.ip):
            raise ConfigError(
                f"application.health.http checks the common IP {common_ip.ip}: in warm mode each node must check its "
                "own application (e.g. http://127.0.0.1:PORT/...)"
            )
    return Config(
        path=path,
        cluster=cluster,
        common_ip=common_ip,
        address_driver=driver,
        alias_url=alias_url,
        nodes=nodes,
        database=database,
        lease=lease,
        app=app,
        announce=announce,
        replication=replication,
        policy=policy,
        http_listen=listen,
        probe_conflict=probe,
        probe_timeout=probe_timeout,
        wake_port=wake_port,
        unset_env=tuple(dict.fromkeys((*unset, *(v for _, v in (*token_unset, *notify_unset))))),
        secrets_unset=(*token_unset, *notify_unset),
        notify=notify,
        http_token=http_token,
    )


def _nodes(top: TableReader, driver: str) -> tuple[NodeConfig, ...]:
    raw_nodes = top.get("nodes", list, required=True)
    nodes: list[NodeConfig] = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise ConfigError(f"nodes[{i}] must be a table: write it as [[nodes]]")
        r = TableReader(raw, f"nodes[{i}]")
        node = NodeConfig(
            name=name_value(r.get("name", str, required=True), f"nodes[{i}].name"),
            interface=r.get("interface", str, default_of(NodeConfig, "interface"), required=driver == "netlink"),
            url=r.url("url"),
            priority=r.integer(NodeConfig, "priority"),
        )
        r.done()
        if driver == "netlink" and not node.interface:
            raise ConfigError(f"nodes[{i}].interface is empty: give the NIC on the common IP's network")
        if any(n.name == node.name for n in nodes):
            raise ConfigError(f"nodes[{i}].name = {node.name!r} is used twice: give every node its own name")
        nodes.append(node)
    if len(nodes) < 1:
        raise ConfigError("nodes is empty: list each machine of the cluster as a [[nodes]] table")
    return tuple(nodes)


def _strings(r: TableReader, key: str, what: str, check: Any = None) -> tuple[str, ...]:
    values = r.get(key, list, [])
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{r._key(key)}[{i}] = {shown('', v)} is not {what}: write it as a quoted string")
        if check is not None:
            check(f"{r._key(key)}[{i}]", v)
    return tuple(values)


def _absolute(where: str, value: str) -> None:
    if not value.startswith("/") or "\n" in value or any(part == ".." for part in value.split("/")):
        raise ConfigError(f"{where} = {value!r} is not an absolute path: write it like /opt/helpdesk")


def _replication(r: TableReader) -> ReplicationConfig:
    paths = _strings(r, "paths", "a path", _absolute)
    if len(set(p.rstrip("/") for p in paths)) != len(paths):
        raise ConfigError("replication.paths lists a path twice: list each directory or file once")
    user = r.text("ssh_user", ACCOUNT, "a user name", "give the login of the receiving nodes' fos user")
    sentinel = r.get("sentinel", str, default_of(ReplicationConfig, "sentinel"))
    if not sentinel or "/" in sentinel or sentinel in (".", ".."):
        raise ConfigError(
            f"replication.sentinel = {sentinel!r} is not a file name: give a name like .fos-sentinel (no '/')"
        )
    for key in ("ssh_key", "known_hosts"):
        if (value := r.get(key, str)) is not None:
            _absolute(f"replication.{key}", value)
            if any(c.isspace() or c in "\"'\\" for c in value):  # rsync's -e is one string split on these
                raise ConfigError(
                    f"replication.{key} holds whitespace, a quote or a backslash: give a path without them"
                )
    cfg = ReplicationConfig(
        paths=paths,
        excludes=_strings(r, "excludes", "an rsync pattern"),
        interval=r.number(ReplicationConfig, "interval"),
        ssh_user=user if user is not None else default_of(ReplicationConfig, "ssh_user"),
        ssh_key=r.get("ssh_key", str),
        ssh_port=r.integer(ReplicationConfig, "ssh_port"),
        known_hosts=r.get("known_hosts", str),
        max_delete=r.integer(ReplicationConfig, "max_delete"),
        sentinel=sentinel,
        stale_after=r.number(ReplicationConfig, "stale_after"),
        timeout=r.number(ReplicationConfig, "timeout"),
    )
    r.done()
    if cfg.interval and not cfg.paths:
        raise ConfigError("replication.interval is set but replication.paths is empty: list what to copy")
    return cfg
