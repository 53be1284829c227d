"""`fos notify test [--to ADDRESS]`: one test message through every configured path (the mail, each webhook),
one attempt each, printing each receiver's answer. Exit 0 when every path delivered, 1 when some failed, 2 when
nothing is configured or the input is bad. It needs no database and no running agent; it prints no secret.

Registered into the `fos` parser by agent/cli.py (register()).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .config import ConfigError, load
from .config_notify import require_secrets
from .exits import EXIT_FAILED, EXIT_OK
from .notify_rules import Notice

if TYPE_CHECKING:
    from .notify_send import Channel

_ADDRESS = re.compile(r"[^@\s,<>\"';:\\]+@[A-Za-z0-9.-]+")


def test_notice(cluster: str) -> Notice:
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = socket.gethostname()
    return Notice(
        "test",
        f"test.{int(datetime.now(UTC).timestamp())}",
        cluster,
        None,
        None,
        at,
        f"a test message from `fos notify test` on {host}: this path works",
        {"sent_from": host},
    )


async def send_test(cfg_path: str, to: tuple[str, ...] | None) -> list[tuple[str, bool, str]]:
    """(path shown, delivered?, answer or error) for every configured path."""
    cfg = load(cfg_path)
    require_secrets(cfg.secrets_unset, False, True, "fos notify test")
    if not cfg.notify.enabled and not to:
        raise ConfigError("notify has no email_to and no webhooks: configure [notify] (or pass --to ADDRESS)")
    notice = test_notice(cfg.cluster)
    # Here, not at the top: aiohttp's client (two TLS contexts built at import) and the mail code load only for
    # this command, not for every `fos` command that registers it (a `fos switchover` starts 0.15 s sooner).
    import aiohttp

    from .notify_send import DeliveryFailed, channels

    async with aiohttp.ClientSession() as session:
        paths = channels(cfg.notify, session, to)

        async def one(channel: Channel) -> tuple[str, bool, str]:
            try:
                return channel.shown, True, await channel.send(notice, socket.gethostname())
            except DeliveryFailed as exc:
                return channel.shown, False, str(exc)

        return list(await asyncio.gather(*(one(c) for c in paths)))


def cmd_notify_test(args: argparse.Namespace) -> int:
    to = None
    if args.to:
        to = tuple(a.strip() for a in args.to for a in a.split(",") if a.strip())
        bad = [a for a in to if not _ADDRESS.fullmatch(a)]
        if bad:
            raise ConfigError(f"--to {bad[0][:80]!r} is not a mail address: write it like ops@example.com")
    results = asyncio.run(send_test(args.config, to))
    for shown, ok, answer in results:
        print(f"{'delivered' if ok else 'FAILED   '} {shown}: {answer}")
    return EXIT_OK if all(ok for _, ok, _ in results) else EXIT_FAILED


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Add `notify test` to the `fos` subcommands."""
    notify = sub.add_parser("notify", help="notification commands")
    notify_sub = notify.add_subparsers(dest="notify_command", required=True, parser_class=type(notify))
    p = with_config(
        notify_sub.add_parser(
            "test", help="send a test message through every configured path (exit 0 all delivered, 1 some failed)"
        )
    )
    p.add_argument(
        "--to", action="append", metavar="ADDRESS", help="mail this address instead of notify.email_to (repeatable)"
    )
    p.set_defaults(func=cmd_notify_test)
