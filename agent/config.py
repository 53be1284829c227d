"""The cluster file: one TOML file, the same on every node. Parsing and validation only, no I/O beyond reading it.

Every problem is reported as a ConfigError whose one-line message names the field and the fix. Unsafe timing
is refused (never silently adjusted): see timing.py for the rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from lease.names import MAX_NAME

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """Bad configuration; the message is one line and names the field."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    interface: str
    url: str | None = None
    priority: int = 0


@dataclass(frozen=True)
class HealthConfig:
    http: str | None = None
    tcp: int | None = None
    command: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    failures: int = 3
    start_grace: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.http or self.tcp or self.command)


@dataclass(frozen=True)
class AppConfig:
    command: str | list[str] | None = None
    start: str | list[str] | None = None
    stop: str | list[str] | None = None
    stop_timeout: float = 10.0
    health: HealthConfig = field(default_factory=HealthConfig)
    hold_off: float = 30.0  # after stepping down for an app failure, do not re-acquire for this long


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    dialect: str | None = None
    call_timeout: float | None = None  # default: heartbeat / 2


@dataclass(frozen=True)
class LeaseConfig:
    ttl: float = 180.0
    heartbeat: float = 10.0
    fence_margin: float = 0.2
    min_hold: float = 5.0  # minimum time between two transitions of one node (no flapping)


@dataclass(frozen=True)
class AnnounceConfig:
    count: int = 3
    interval: float = 0.2
    refresh: float = 0.0  # seconds between gratuitous ARP refreshes while active; 0 = off


@dataclass(frozen=True)
class Config:
    path: str
    cluster: str
    common_ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
    address_driver: str
    alias_url: str | None
    nodes: tuple[NodeConfig, ...]
    database: DatabaseConfig
    lease: LeaseConfig
    app: AppConfig
    announce: AnnounceConfig
    http_listen: str | None
    probe_conflict: bool = True
    probe_timeout: float = 0.2

    @property
    def call_timeout(self) -> float:
        return self.database.call_timeout if self.database.call_timeout is not None else self.lease.heartbeat / 2

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"node {name!r} is not in [[nodes]] of {self.path}: use one of {self.node_names()}")

    def node_names(self) -> str:
        return ", ".join(n.name for n in self.nodes)


class _Reader:
    """Typed access to a TOML table that remembers the dotted path, for messages."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self._key(key)} is missing: add it to the config file")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{self._key(key)} = {value!r} has the wrong type: expected {_kind_name(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self._key(key)} = {value!r} has the wrong type: expected {_kind_name(kind)}")
        return value

    def number(self, key: str, default: float | None, minimum: float = 0.0, required: bool = False) -> float:
        value = self.get(key, (int, float), default, required)
        if value is None:
            return None  # type: ignore[return-value]
        if value <= minimum:
            raise ConfigError(f"{self._key(key)} = {value} must be greater than {minimum:g}")
        return float(value)

    def table(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict, {}), self._key(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self._key(unknown[0])} is not a known setting: check its spelling against examples/fos.toml"
            )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _name(value: str, field_name: str) -> str:
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"{field_name} = {value!r} is not a valid name: use 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
        )
    return value


def expand_env(value: str, field_name: str, env: dict[str, str] | None = None) -> str:
    """Replace ${VAR} with the environment's value, so secrets need not be written in the file."""
    environ = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in environ:
            raise ConfigError(f"{field_name} uses ${{{m.group(1)}}}, which is not set in the environment: export it")
        return environ[m.group(1)]

    return _ENV.sub(sub, value)


def parse_common_ip(
    text: str, netmask: str | None, field_name: str
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """`a.b.c.d/prefix`, or an address with a dotted netmask; a bare IPv4 address gets 255.255.255.0."""
    try:
        if "/" in text:
            if netmask:
                raise ConfigError(f"{field_name} has a prefix and cluster.netmask is set too: keep only one")
            iface = ipaddress.ip_interface(text)
        else:
            addr = ipaddress.ip_address(text)
            mask = netmask or ("255.255.255.0" if addr.version == 4 else "64")
            iface = ipaddress.ip_interface(f"{text}/{mask}")
    except ValueError as exc:
        raise ConfigError(f"{field_name} = {text!r} is not an address: {exc}") from None
    if iface.ip == iface.network.network_address and iface.network.prefixlen < iface.max_prefixlen:
        raise ConfigError(f"{field_name} = {text!r} is the network address of its subnet: choose a host address")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise ConfigError(f"{field_name} = {text!r} cannot be a common IP: choose a unicast address on the LAN")
    return iface


def _command(reader: _Reader, key: str) -> str | list[str] | None:
    value = reader.get(key, (str, list))
    if isinstance(value, list) and (not value or not all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{reader._key(key)} must be a string or a non-empty list of strings")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{reader._key(key)} is empty: give the command, or remove the key")
    return value  # type: ignore[no-any-return]


def load(path: str, env: dict[str, str] | None = None) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass --config with the cluster file's path") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse(data, path, env)


def parse(data: dict[str, Any], path: str = "<config>", env: dict[str, str] | None = None) -> Config:
    top = _Reader(data, "")
    cl = top.table("cluster")
    cluster = _name(cl.get("name", str, required=True), "cluster.name")
    driver = cl.get("address_driver", str, "netlink")
    if driver not in ("netlink", "none"):
        raise ConfigError(f"cluster.address_driver = {driver!r} is unknown: use 'netlink' or 'none'")
    ip_text = cl.get("common_ip", str)
    common_ip = parse_common_ip(ip_text, cl.get("netmask", str), "cluster.common_ip") if ip_text else None
    if common_ip is None and driver == "netlink":
        raise ConfigError("cluster.common_ip is missing: set it, or set cluster.address_driver = 'none'")
    alias_url = cl.get("alias_url", str)
    probe = cl.get("probe_conflict", bool, True)
    probe_timeout = cl.number("probe_timeout", 0.2)
    cl.done()

    raw_nodes = top.get("nodes", list, required=True)
    nodes: list[NodeConfig] = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise ConfigError(f"nodes[{i}] must be a table: write it as [[nodes]]")
        r = _Reader(raw, f"nodes[{i}]")
        node = NodeConfig(
            name=_name(r.get("name", str, required=True), f"nodes[{i}].name"),
            interface=r.get("interface", str, required=driver == "netlink") or "",
            url=r.get("url", str),
            priority=int(r.get("priority", int, 0)),
        )
        r.done()
        if any(n.name == node.name for n in nodes):
            raise ConfigError(f"nodes[{i}].name = {node.name!r} is used twice: give every node its own name")
        nodes.append(node)
    if len(nodes) < 1:
        raise ConfigError("nodes is empty: list each machine of the cluster as a [[nodes]] table")

    db = top.table("database")
    dsn = expand_env(db.get("dsn", str, required=True), "database.dsn", env)
    database = DatabaseConfig(dsn=dsn, dialect=db.get("dialect", str), call_timeout=db.number("call_timeout", None))
    db.done()

    ls = top.table("lease")
    lease = LeaseConfig(
        ttl=ls.number("ttl", 180.0),
        heartbeat=ls.number("heartbeat", 10.0),
        fence_margin=ls.number("fence_margin", 0.2),
        min_hold=ls.number("min_hold", 5.0, minimum=-1e-9),
    )
    ls.done()

    ap = top.table("application")
    hr = ap.table("health")
    health = HealthConfig(
        http=hr.get("http", str),
        tcp=hr.get("tcp", int),
        command=hr.get("command", str),
        interval=hr.number("interval", 2.0),
        timeout=hr.number("timeout", 1.0),
        failures=int(hr.number("failures", 3)),
        start_grace=hr.number("start_grace", 30.0),
    )
    hr.done()
    if sum(x is not None for x in (health.http, health.tcp, health.command)) > 1:
        raise ConfigError("application.health has more than one of http, tcp, command: keep exactly one")
    if health.tcp is not None and not 0 < health.tcp < 65536:
        raise ConfigError(f"application.health.tcp = {health.tcp} is not a port: use 1-65535")
    app = AppConfig(
        command=_command(ap, "command"),
        start=_command(ap, "start"),
        stop=_command(ap, "stop"),
        stop_timeout=ap.number("stop_timeout", 10.0),
        health=health,
        hold_off=ap.number("hold_off", 30.0, minimum=-1e-9),
    )
    ap.done()
    if app.command is not None and (app.start is not None or app.stop is not None):
        raise ConfigError("application has command and start/stop: use command (supervised) or start and stop")
    if app.command is None and (app.start is None) != (app.stop is None):
        raise ConfigError("application needs both start and stop (or a supervised command): add the missing one")

    an = top.table("announce")
    announce = AnnounceConfig(
        count=int(an.number("count", 3)),
        interval=an.number("interval", 0.2),
        refresh=an.number("refresh", 0.0, minimum=-1e-9),
    )
    an.done()

    hp = top.table("http")
    listen = hp.get("listen", str, "0.0.0.0:8470")
    hp.done()
    top.done()

    if health.interval < health.timeout:
        raise ConfigError(
            f"application.health.timeout = {health.timeout:g} is longer than application.health.interval = "
            f"{health.interval:g}: lower the timeout"
        )
    return Config(
        path=path,
        cluster=cluster,
        common_ip=common_ip,
        address_driver=driver,
        alias_url=alias_url,
        nodes=tuple(nodes),
        database=database,
        lease=lease,
        app=app,
        announce=announce,
        http_listen=listen or None,
        probe_conflict=probe,
        probe_timeout=probe_timeout,
    )
