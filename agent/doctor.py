"""`fos doctor`: the prerequisites of a fos pair as checks, each pass / warn / fail (or skip) with the fix.

Exit 0 when nothing fails (warnings are printed), 1 when a check fails. Never changes anything: it reads the
config, asks the database (read-only statements), probes the network (ARP/ND requests, TLS and ssh connections)
and runs the application's health check once on the active node. The checks are in doctor_checks.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request

from lease import StoreError
from netops import NetopsError, probe_address, validate

from .config import Config, ConfigError, NodeConfig, load, peer_host
from .doctor_checks import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    Check,
    check_alias_certificate,
    check_alias_resolves,
    check_capabilities,
    check_config_permissions,
    check_database,
    check_replication,
    compare_macs,
    peers_seen,
    resolve_ips,
)
from .logs import configure as configure_logs
from .node import select_node
from .replication import run_command
from .stores import command_store

PROBE_TIMEOUT_S = 1.0


async def check_network(cfg: Config, node: NodeConfig, holder: bool) -> list[Check]:
    """This node's interface up and on the common IP's subnet; nobody else answers for the common IP (only
    us, when we hold it); the other nodes' MACs differ from ours."""
    if cfg.address_driver != "netlink" or cfg.common_ip is None:
        return [Check("interface", SKIP, "address_driver = 'none': no common IP on this node")]
    try:
        iface = await asyncio.to_thread(validate, node.interface, cfg.common_ip)  # netlink calls block
    except NetopsError as exc:
        return [Check("interface", FAIL, str(exc), "fix nodes.interface or cluster.common_ip (fos iflist)")]
    out = [Check("interface", PASS, f"{iface.name} is up and on the subnet of {cfg.common_ip}")]
    ip = str(cfg.common_ip.ip)
    bound_here = any(a.split("/")[0] == ip for a in iface.addresses)
    if bound_here and holder:
        out.append(Check("common_ip.free", PASS, f"{ip} is bound here, and this node holds the lease"))
    elif bound_here:
        out.append(
            Check(
                "common_ip.free",
                FAIL,
                f"{ip} is bound on {iface.name} but this node does not hold the lease",
                f"remove it (ip addr del {cfg.common_ip} dev {iface.name}) or find who added it",
            )
        )
    else:
        mac = await probe_address(iface.name, ip, PROBE_TIMEOUT_S)
        if mac is None:
            out.append(Check("common_ip.free", PASS, f"no other host answers for {ip} on {iface.name}"))
        else:
            out.append(
                Check(
                    "common_ip.free",
                    FAIL if not holder else WARN,
                    f"{mac} answers for the common IP {ip} on {iface.name}",
                    "choose an unused address for cluster.common_ip (fos check-ip), or stop the host that uses it",
                )
            )
    peers: dict[str, str | None] = {}
    for other in cfg.nodes:
        if other.name == node.name:
            continue
        addresses = [a for a in resolve_ips(peer_host(other)) if a != ip]
        peers[other.name] = await probe_address(iface.name, addresses[0], PROBE_TIMEOUT_S) if addresses else None
    out.extend(compare_macs(iface.mac, peers))
    return out


async def check_app(cfg: Config, holder: bool) -> Check:
    """The application's health check, once, on the active node (elsewhere the app is not running)."""
    health = cfg.app.health
    if not health.enabled:
        return Check("app.health", SKIP, "no [application.health] check configured")
    if not holder:
        return Check("app.health", SKIP, "this node is not the active one: its application is not running")
    fix = "start the application, or fix [application.health]"
    try:
        if health.http:
            url = health.http
            status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=health.timeout).status)
            return Check("app.health", PASS, f"the health URL answered {status}")
        if health.tcp:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", health.tcp), health.timeout)
            writer.close()
            return Check("app.health", PASS, f"port {health.tcp} accepts connections")
        assert health.command is not None
        code, _, err = await run_command(["sh", "-c", health.command], health.timeout)
        if code == 0:
            return Check("app.health", PASS, "the health command exited 0")
        return Check("app.health", FAIL, f"the health command exited {code}: {err.strip()[:200]}", fix)
    except (OSError, TimeoutError, ValueError) as exc:
        return Check("app.health", FAIL, f"the health check failed: {exc}", fix)


async def run_checks(path: str, node_name: str | None) -> list[Check]:
    """Every check, in the order an operator sets a pair up. A config that does not load stops the rest."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        return [Check("config.valid", FAIL, str(exc), "fix the file (fos config check)")]
    checks = [Check("config.valid", PASS, f"{path} is valid (cluster {cfg.cluster})"), check_config_permissions(path)]
    try:
        node = select_node(cfg, node_name)
        checks.append(Check("node", PASS, f"this machine is node {node.name}"))
    except ConfigError as exc:
        return [*checks, Check("node", FAIL, str(exc), "pass --node, or fix [[nodes]]")]
    checks.append(check_capabilities(cfg))
    store = command_store(cfg)
    holder = False
    try:
        db = await check_database(cfg, store)
        checks.extend(db)
        if all(c.status != FAIL for c in db):
            lease = await store.read(cfg.cluster, timeout=5.0)
            holder = lease.held_by(node.name)
            records = await store.list_nodes(cfg.cluster, timeout=5.0)
            checks.extend(peers_seen(records, node.name, [n.name for n in cfg.nodes], cfg.lease.heartbeat))
    except StoreError as exc:
        checks.append(Check("database", FAIL, str(exc), "see the message"))
    finally:
        await store.close()
    checks.extend(await check_network(cfg, node, holder))
    checks.append(await check_app(cfg, holder))
    checks.append(check_alias_resolves(cfg))
    checks.append(await asyncio.to_thread(check_alias_certificate, cfg))
    checks.extend(await check_replication(cfg, node.name))
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<22} {c.message}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"{'':<28}fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL, SKIP)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    configure_logs("error")  # the checks are the output; stdout stays JSON with --json
    checks = asyncio.run(run_checks(args.config, args.node))
    if args.json:
        print(json.dumps({"ok": exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(render(checks))
    return exit_code(checks)
