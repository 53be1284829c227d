"""Operations subcommands: `fos mirror`, `fos mirror receive`, `fos mirror status` and `fos doctor`.

Registered into the `fos` parser by agent/cli.py (register()); errors follow cli.py's rules: ConfigError exit
2, a refused or failed operation exit 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import syslog
from collections.abc import Callable

import structlog

from lease import StoreError

from .config import Config, ConfigError, load
from .exits import EXIT_FAILED, EXIT_OK
from .logs import configure as configure_logs
from .node import confirm_node, select_node
from .replication import MirrorRefused, TargetResult, mirror
from .replication_receive import Push, ReceiveRefused, is_probe, parse_push, receive
from .replication_schedule import freshness
from .stores import command_store

log = structlog.get_logger("fos.replication")


async def _mirror(cfg: Config, me: str, to: str | None, dry_run: bool) -> list[TargetResult]:
    store = command_store(cfg)
    try:
        return await mirror(cfg, store, me, to=to, dry_run=dry_run, by_operator=True)
    finally:
        await store.close()


def cmd_mirror(args: argparse.Namespace) -> int:
    configure_logs("warning")  # warnings (a missing sentinel) on stderr; stdout is the result
    cfg = load(args.config)
    me = (confirm_node(cfg, args.node) if args.node else select_node(cfg, None)).name
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


async def _receive(cfg: Config, me: str, push: Push) -> int:
    store = command_store(cfg)
    try:
        return await receive(
            push,
            lambda: store.read(cfg.cluster, timeout=cfg.call_timeout),
            me,
            poll=min(1.0, cfg.lease.heartbeat / 2),
        )
    finally:
        await store.close()


async def _probe(cfg: Config, me: str) -> str:
    """The doctor's probe: a real lease read, so a DSN that cannot be expanded or reached shows here."""
    store = command_store(cfg)
    try:
        lease = await store.read(cfg.cluster, timeout=cfg.call_timeout)
    finally:
        await store.close()
    holder = lease.holder if lease.held else "nobody"
    return (
        f"fos mirror receive: node {me} ready for {', '.join(cfg.replication.paths) or 'no paths'}; "
        f"lease read: holder {holder}, epoch {lease.epoch}"
    )


DEFAULT_ENV_FILE = "/etc/fos/fos.env"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile's plain form): blank lines and # comments skipped, one pair of
    matching surrounding quotes removed, nothing evaluated. A one-line ConfigError (file and line) otherwise;
    the values are never shown (they are secrets)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"--env-file {path} does not exist: give the agent's EnvironmentFile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--env-file {path} cannot be read ({type(exc).__name__}): check its mode") from None
    env = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ConfigError(f"--env-file {path} line {number} is not KEY=VALUE: write it like FOS_DB_PASSWORD=...")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def receive_env(env_file: str | None) -> dict[str, str]:
    """This process's environment plus --env-file (default DEFAULT_ENV_FILE when it exists): sshd runs the
    forced command without the agent's systemd environment."""
    path = env_file if env_file is not None else (DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None)
    return {**os.environ, **(read_env_file(path) if path else {})}


def cmd_mirror_receive(args: argparse.Namespace) -> int:
    """The ssh forced command: nothing may reach stdout except rsync's (it is rsync's protocol channel)."""
    configure_logs("warning")  # on stderr, which ssh passes back to the sender (and sshd's log keeps)
    cfg = load(args.config, env=receive_env(args.env_file))
    me = select_node(cfg, args.node).name
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        if is_probe(command):
            print(asyncio.run(_probe(cfg, me)))
            return EXIT_OK
        rep = cfg.replication
        return asyncio.run(_receive(cfg, me, parse_push(command, rep.paths, rep.max_delete)))
    except ReceiveRefused as exc:
        return _refused(me, str(exc))
    except StoreError as exc:
        return _refused(me, f"the lease database cannot be asked ({exc})")


def _refused(me: str, why: str) -> int:
    """Log a refused push on this node (syslog, i.e. the journal, and a structlog line on stderr, which ssh
    passes back to the sender) and tell the sender in one line."""
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0]
    log.warning("mirror_receive_refused", node=me, why=why, client=client)
    syslog.openlog("fos-mirror-receive", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_WARNING, f"refused a push to node {me} from {client or 'unknown'}: {why}")
    print(f"fos mirror receive on {me}: refused: {why}", file=sys.stderr)
    return EXIT_FAILED


async def _ages(cfg: Config) -> list[dict[str, object]]:
    store = command_store(cfg)
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
    r.add_argument(
        "--env-file",
        metavar="PATH",
        help=f"KEY=VALUE lines for the DSN's ${{VARS}} (default: {DEFAULT_ENV_FILE} if it exists)",
    )
    r.set_defaults(func=cmd_mirror_receive)
    s = with_config(msub.add_parser("status", help="how old each node's copy is (last good fos mirror)"))
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_mirror_status)

    d = with_config(sub.add_parser("doctor", help="check the prerequisites; exit 0 when nothing fails"))
    d.add_argument("--node", help="check as this [[nodes]] entry (default: the node this machine matches)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=cmd_doctor)
