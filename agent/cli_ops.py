"""Operations subcommands: `fos mirror`, `fos mirror receive`, `fos mirror status` and `fos doctor`.

Registered into the `fos` parser by agent/cli.py (register()); errors follow cli.py's rules: ConfigError exit
2, a refused or failed operation exit 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable

from lease import SqlLeaseStore, StoreError

from .config import Config, load
from .logs import configure as configure_logs
from .node import select_node
from .replication import MirrorRefused, TargetResult, mirror
from .replication_receive import ReceiveRefused, is_probe, receive, server_argv
from .replication_schedule import freshness

EXIT_OK, EXIT_FAILED = 0, 1


def open_store(cfg: Config) -> SqlLeaseStore:
    return SqlLeaseStore(
        cfg.database.dsn,
        dialect=cfg.database.dialect,
        schema=cfg.database.schema,
        call_timeout=max(cfg.call_timeout, 5.0),
    )


async def _mirror(cfg: Config, me: str, to: str | None, dry_run: bool) -> list[TargetResult]:
    store = open_store(cfg)
    try:
        return await mirror(cfg, store, me, to=to, dry_run=dry_run)
    finally:
        await store.close()


def cmd_mirror(args: argparse.Namespace) -> int:
    configure_logs("warning")  # warnings (a missing sentinel) on stderr; stdout is the result
    cfg = load(args.config)
    me = select_node(cfg, args.node).name
    try:
        results = asyncio.run(_mirror(cfg, me, args.to, args.dry_run))
    except MirrorRefused as exc:
        print(f"fos: mirror refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            print(f"{me} -> {r.detail()}")
    return EXIT_OK if all(r.good or r.result == "dry_run" for r in results) else EXIT_FAILED


async def _receive(cfg: Config, me: str, argv: list[str]) -> int:
    store = open_store(cfg)
    try:
        return await receive(
            argv,
            lambda: store.read(cfg.cluster, timeout=cfg.call_timeout),
            me,
            poll=min(1.0, cfg.lease.heartbeat / 2),
        )
    finally:
        await store.close()


def cmd_mirror_receive(args: argparse.Namespace) -> int:
    """The ssh forced command: nothing may reach stdout except rsync's (it is rsync's protocol channel)."""
    configure_logs("warning")  # on stderr, which ssh passes back to the sender
    cfg = load(args.config)
    me = select_node(cfg, args.node).name
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if is_probe(command):
        print(f"fos mirror receive: node {me} ready for {', '.join(cfg.replication.paths) or 'no paths'}")
        return EXIT_OK
    try:
        return asyncio.run(_receive(cfg, me, server_argv(command, cfg.replication.paths)))
    except ReceiveRefused as exc:
        print(f"fos mirror receive on {me}: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreError as exc:
        print(f"fos mirror receive on {me}: refused: the lease database cannot be asked ({exc})", file=sys.stderr)
        return EXIT_FAILED


async def _ages(cfg: Config) -> list[dict[str, object]]:
    store = open_store(cfg)
    try:
        return [(await freshness(store, cfg.cluster, n.name, timeout=cfg.call_timeout)).as_dict() for n in cfg.nodes]
    finally:
        await store.close()


def cmd_mirror_status(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    ages = asyncio.run(_ages(cfg))
    if args.json:
        print(json.dumps(ages, indent=2))
        return EXIT_OK
    for a in ages:
        age = "never copied" if a["age_s"] is None else f"{a['age_s']:.0f}s old (epoch {a['epoch']})"
        print(f"{a['node']:<16} {age}")
    return EXIT_OK


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Add `mirror` (with `receive` and `status`) and `doctor` to the `fos` subcommands."""
    from .doctor import cmd_doctor

    p = with_config(sub.add_parser("mirror", help="copy the installation from the active node to the others"))
    p.add_argument("--to", metavar="NODE", help="copy only to this node (default: every other node)")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied; change nothing")
    p.add_argument("--node", help="this machine's [[nodes]] name (default: by hostname, then by local address)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_mirror)
    msub = p.add_subparsers(dest="mirror_command", required=False, parser_class=type(p))
    r = with_config(msub.add_parser("receive", help="the ssh forced command on a receiving node (authorized_keys)"))
    r.add_argument("--node", help="this machine's [[nodes]] name")
    r.set_defaults(func=cmd_mirror_receive)
    s = with_config(msub.add_parser("status", help="how old each node's copy is (last good fos mirror)"))
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_mirror_status)

    d = with_config(sub.add_parser("doctor", help="check the prerequisites; exit 0 when nothing fails"))
    d.add_argument("--node", help="check as this [[nodes]] entry (default: the node this machine matches)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=cmd_doctor)
