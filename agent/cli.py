"""The `fos` command line. Errors are one line on stderr; exit codes: 0 ok, 1 the operation failed (database
unreachable, address taken, agent stopped on a fault), 2 bad input (usage, config) and nothing was changed."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import grp
import ipaddress
import json
import math
import os
import pwd
import signal
import sys
from collections.abc import Sequence
from typing import Any

from lease import StoreError
from netops import NetopsError, find_interface, format_table, list_interfaces, probe_address, validate

from . import __version__
from .config import Config, ConfigError, NodeConfig, check_listen, load
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .logs import configure as configure_logs
from .node import select_node
from .stores import command_store
from .timing import check

# cli_control, cli_notify, cli_ops (and through them history, doctor, mirror, mail) are imported where used, not
# here: `fos run` never needs them, and every module it does not load is memory its agent does not hold (issue #14).

DEFAULT_CONFIG = "/etc/fos/fos.toml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block, and exit 2 like every other bad input.
        print(f"{self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def cmd_config_check(args: argparse.Namespace) -> int:
    # It never connects, so the DSN's ${VAR} secrets need not be set here: they are replaced by a placeholder.
    cfg = load(args.config, defer_env=True)
    check(cfg)
    check_listen(cfg)
    skipped = ""
    try:
        node: NodeConfig | None = select_node(cfg, args.node)
    except ConfigError as exc:
        if args.node:
            raise
        node, skipped = None, str(exc)
    checked = check_on_node(cfg, node) if node is not None else ""
    print(
        f"{args.config}: ok (cluster {cfg.cluster}, nodes {cfg.node_names()}, ttl {cfg.lease.ttl:g}s, "
        f"heartbeat {cfg.lease.heartbeat:g}s)"
    )
    if node is None:
        print(f"this machine matches none of the nodes, so the node checks were skipped: {skipped}")
    else:
        print(f"this machine is node {node.name}: {checked}")
    for name in cfg.unset_env:
        print(f"note: ${{{name}}} is not set here; `fos run`, `fos init-db` and `fos status` need it")
    return EXIT_OK


def check_on_node(cfg: Config, node: NodeConfig) -> str:
    """What only the node itself can check: its interface is up and on the common IP's subnet, and the
    application's user and group exist. Raises NetopsError / ConfigError; returns what was checked."""
    done = []
    if cfg.address_driver == "netlink":
        assert cfg.common_ip is not None
        iface = validate(node.interface, cfg.common_ip)
        done.append(f"interface {iface.name} is up and on the subnet of {cfg.common_ip}")
    else:
        done.append("no common IP to check (address_driver = 'none')")
    for key, value, lookup in (
        ("user", cfg.app.user, lambda v: pwd.getpwuid(int(v)) if v.isdigit() else pwd.getpwnam(v)),
        ("group", cfg.app.group, lambda v: grp.getgrgid(int(v)) if v.isdigit() else grp.getgrnam(v)),
    ):
        if value is None:
            continue
        try:
            lookup(value)
        except (KeyError, OverflowError):  # OverflowError: a numeric id beyond the platform's uid_t
            raise ConfigError(
                f"application.{key} = {value!r} is not a {key} on this machine: create it, or fix the name"
            ) from None
        done.append(f"application.{key} {value} exists")
    return "; ".join(done)


async def _init_db(cfg: Config) -> str:
    store = command_store(cfg)
    try:
        before, after = await store.init_schema(timeout=15)
        await store.ensure_cluster(cfg.cluster)
        return (
            f"schema version {after} in the {store.dialect.name} database (was {before}); "
            f"cluster {cfg.cluster!r} is ready"
        )
    finally:
        await store.close()


def cmd_init_db(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    print(asyncio.run(_init_db(cfg)))
    return EXIT_OK


async def _status(cfg: Config) -> dict[str, Any]:
    from .cli_control import node_is_down  # here, not at the top: see the note on the imports
    from .replication_schedule import freshness

    store = command_store(cfg)
    try:
        row = await store.status_row(cfg.cluster)
        nodes = await store.list_nodes(cfg.cluster)
        events = await store.list_events(cfg.cluster, limit=10)
        holder = (row or {}).get("holder")
        copy = (await freshness(store, cfg.cluster, holder)).as_dict() if cfg.replication.enabled and holder else None
    finally:
        await store.close()
    return {
        "cluster": cfg.cluster,
        "alias_url": cfg.alias_url,
        "app_mode": cfg.app.mode,
        "lease": row,
        "holder_copy": copy,
        "nodes": [
            {
                "node": n.node,
                "down": node_is_down(n.role, n.last_seen_age_s, cfg.lease.heartbeat),
                "role": n.role,
                "app_healthy": n.app_healthy,
                "url": n.url,
                "agent_version": n.agent_version,
                "last_seen_age_s": n.last_seen_age_s,
                "sees": n.sees,
            }
            for n in nodes
        ],
        "events": [
            {"id": e.id, "at": e.at.isoformat(), "node": e.node, "kind": e.kind, "epoch": e.epoch, "detail": e.detail}
            for e in events
        ],
    }


def _print_status(status: dict[str, Any]) -> None:
    lease = status["lease"] or {}
    holder = lease.get("holder") or "(none)"
    left = lease.get("seconds_left")
    left_text = "-" if left is None or lease.get("expired") else f"{left:.1f}s"
    alias = f" ({status['alias_url']})" if status.get("alias_url") else ""
    print(
        f"cluster {status['cluster']}{alias}: holder {holder}, epoch {lease.get('epoch', 0)}, "
        f"lease left {left_text}{' (expired)' if lease.get('expired') and lease.get('holder') else ''}"
    )
    for line in control_lines(lease):
        print(line)
    if status.get("app_mode") == "warm":
        print("application mode warm: it runs on every node, only the common IP moves")
    copy = status.get("holder_copy")
    if copy is not None:
        age = copy.get("age_s")
        print(
            f"installation copy on {copy['node']}: "
            + ("no good fos mirror on record" if age is None else f"last good fos mirror {age:.0f}s ago")
        )
    print(f"{'NODE':<16} {'ROLE':<10} {'APP':<8} {'SEEN':>8}  {'SEES':<12} URL")
    for n in status["nodes"]:
        seen = "-" if n["last_seen_age_s"] is None else f"{n['last_seen_age_s']:.1f}s"
        role, app = ("DOWN", "-") if n["down"] else (n["role"], _app_text(n["app_healthy"]))
        sees = "-" if n["down"] or n.get("sees") is None else (n["sees"] or "normal")
        print(f"{n['node']:<16} {role:<10} {app:<8} {seen:>8}  {sees:<12} {n['url'] or ''}")
    print("recent events:")
    for e in status["events"]:
        epoch = "-" if e["epoch"] is None else str(e["epoch"])
        print(f"  {e['at'][:23]}  {e['node'] or '-':<12} {e['kind']:<13} epoch {epoch:<5} {e['detail'] or ''}")


def _for(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def control_lines(lease: dict[str, Any]) -> list[str]:
    """What `fos status` says about the control state of the lease row (schema 3): a pending switchover,
    maintenance mode, a disabled cluster, automatic failover off (flapping)."""
    out = []
    if lease.get("switchover_requested_at") is not None:
        due = lease.get("switchover_due_in_s")
        when = "due now" if due is None or due <= 0 else f"due in {_for(due)}"
        out.append(f"SWITCHOVER pending: to {lease.get('switchover_to')}, {when}, by {lease.get('switchover_by')}")
    if lease.get("maintenance_since") is not None:
        out.append(
            f"MAINTENANCE MODE on for {_for(lease.get('maintenance_for_s'))} (by {lease.get('maintenance_by')}): "
            "nobody fails over, fos starts and stops no application; `fos maintenance off` ends it"
        )
    if lease.get("disabled_since") is not None:
        out.append(
            f"DISABLED for {_for(lease.get('disabled_for_s'))} (by {lease.get('disabled_by')}): no node serves; "
            "`fos enable` ends it"
        )
    if lease.get("failover_off_since") is not None:
        out.append(
            f"FLAPPING: automatic failover off for {_for(lease.get('failover_off_for_s'))} "
            f"({lease.get('failover_off_reason')}); `fos enable` turns it on again"
        )
    return out


def _app_text(healthy: bool | None) -> str:
    return {True: "healthy", False: "failing", None: "-"}[healthy]


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    status = asyncio.run(_status(cfg))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print_status(status)
    return EXIT_OK


def cmd_iflist(args: argparse.Namespace) -> int:
    interfaces = list_interfaces()
    if args.json:
        print(json.dumps([i.as_dict() for i in interfaces], indent=2))
    else:
        print(format_table(interfaces))
    return EXIT_OK


def cmd_check_ip(args: argparse.Namespace) -> int:
    try:
        ip = str(ipaddress.ip_address(args.address.split("/")[0]))
    except ValueError:
        raise ConfigError(f"ADDRESS {args.address!r} is not an IP address: give one like 192.168.10.50") from None
    iface = find_interface(args.interface)
    if not iface.usable:
        raise ConfigError(f"--interface {args.interface} is {iface.state}: choose the NIC of the network that is UP")
    address = ipaddress.ip_address(ip)
    nets = [n for n in iface.networks() if n.version == address.version]
    if not any(address in n for n in nets):  # the agent would refuse it as common_ip (netops.validate)
        shown = ", ".join(str(n) for n in nets) or "none"
        raise ConfigError(
            f"{ip} is not in a subnet of {args.interface} (its IPv{address.version} subnets: {shown}): the agent "
            "refuses a common IP off the NIC's network; choose an address there, or the NIC on that network"
        )
    mac = asyncio.run(probe_address(args.interface, ip, args.timeout))
    if mac:
        print(f"{ip} is in use: {mac} answers for it on {args.interface}")
        return EXIT_FAILED
    print(f"{ip} is free on {args.interface}: no host answered within {args.timeout:g}s")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    configure_logs(args.log_level, args.log_json)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack: for a stuck agent
    cfg = load(args.config)
    node = select_node(cfg, args.node)
    # Here, not at the top: the agent's service (aiohttp: its client builds two TLS contexts at import, about
    # 0.25 s) is not loaded by the other commands, e.g. `fos switchover`, whose start-up is part of a planned move.
    from .service import serve

    return asyncio.run(serve(cfg, node, args.state_dir))  # serve() checks timing, http.listen, the state dir first


def _probe_seconds(text: str) -> float:
    """A finite number of seconds, 0 < s <= 60; anything else is a one-line usage error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 60: give e.g. 1")
    return value


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole `fos` parser; for an `argv` that starts with `run`, only what `fos run` parses (argparse picks the
    sub-command by that first word, so the others' parsers, and their modules, are not needed: issue #14)."""
    parser = _Parser(prog="fos", description="Fail Over Service: keeps one node of a pair serving the common IP.")
    parser.add_argument("--version", action="version", version=f"fos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", "-c", default=DEFAULT_CONFIG, help=f"the cluster file (TOML; default {DEFAULT_CONFIG})"
        )
        return p

    p = with_config(sub.add_parser("run", help="run the agent on this node"))
    p.add_argument("--node", help="this machine's [[nodes]] name (default: by hostname, then by local address)")
    p.add_argument(
        "--state-dir",
        default=os.environ.get("FOS_STATE_DIR", "/run/fos"),
        help="where the supervised application's pid is kept (default /run/fos)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action="store_true", help="log JSON lines instead of key=value")
    p.set_defaults(func=cmd_run)
    p = with_config(sub.add_parser("init-db", help="create or upgrade the fos tables and the cluster's lease row"))
    p.set_defaults(func=cmd_init_db)
    p = with_config(sub.add_parser("status", help="show holder, nodes and recent events from the database"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    cfg = sub.add_parser("config", help="configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    p = with_config(cfg_sub.add_parser("check", help="validate the cluster file without starting anything"))
    p.add_argument("--node", help="check as this [[nodes]] entry (default: the node this machine matches, if any)")
    p.set_defaults(func=cmd_config_check)
    p = sub.add_parser("iflist", help="list network interfaces with state, MAC and addresses")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_iflist)
    p = sub.add_parser("check-ip", help="is ADDRESS free to use as the common IP? (exit 0 free, 1 in use)")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--interface", "-i", required=True, help="the NIC on the address's network")
    p.add_argument("--timeout", type=_probe_seconds, default=1.0, help="seconds to wait for an answer (default 1)")
    p.set_defaults(func=cmd_check_ip)
    if argv is not None and list(argv[:1]) == ["run"]:
        return parser
    from . import cli_control, cli_notify, cli_ops  # here, not at the top: see the note on the imports

    cli_ops.register(sub, with_config)
    cli_control.register(sub, with_config)
    cli_notify.register(sub, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every refused input (ConfigError, NetopsError) is exit 2 with exactly one line on stderr,
    a failed operation (StoreError) exit 1 with one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail("config error: ", exc, EXIT_USAGE)
    except NetopsError as exc:
        return _fail("", exc, EXIT_USAGE)
    except StoreError as exc:
        return _fail("database: ", exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED


def _fail(prefix: str, exc: Exception, code: int) -> int:
    print(f"fos: {prefix}{' '.join(str(exc).splitlines())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
