"""Run one netops operation in the current network namespace and print the result as JSON; the tests start it
with `ip netns exec` so the binder works inside a test host.

    python -m tests.support.nsbind ACTION --interface eth0 --address A/P [options]

ACTION: bind | bind_announce | unbind | is_bound | refresh | announce | probe | probe_until_clear | hold, or one
that cancels an operation mid-way and reports when the cancellation returned (CLOCK_REALTIME, to compare with
kernel packet timestamps): cancel_bind (with --slow-write, a bind whose netlink write is slowed), cancel_announce,
cancel_probe. Test seams, to provoke failures at exact points: --slow-write S sleeps before the netlink write;
--vanish-after find deletes the interface right after the binder found the address; --max-files N lowers the
open-file limit once the event loop runs (so opening a netlink socket fails with EMFILE).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures.thread  # noqa: F401 - asyncio.to_thread imports it at first use: before the fd limit
import contextlib
import ipaddress
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from netops import Announce, NetlinkBinder, NetopsError


def add_seams(binder: NetlinkBinder, args: argparse.Namespace) -> None:
    if args.slow_write:
        write = binder._write

        def slow_write(command: str, lifetime: int | None, not_after: float | None = None) -> None:
            time.sleep(args.slow_write)
            write(command, lifetime, not_after)

        setattr(binder, "_write", slow_write)  # noqa: B010 - replacing a method on one instance
    if args.vanish_after == "find":
        find: Callable[..., Any] = binder._find

        def find_then_vanish(ipr: Any, index: int) -> Any:
            found = find(ipr, index)
            subprocess.run(["ip", "link", "del", binder.interface], check=True)
            return found

        setattr(binder, "_find", find_then_vanish)  # noqa: B010


async def cancelled(coro: Any, after: float) -> dict[str, Any]:
    """Start `coro`, cancel it after `after` s, and report when the awaited cancellation returned."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(after)
    requested = time.time()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {"requested": requested, "returned": time.time(), "cancelled": task.cancelled()}


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action")
    p.add_argument("--interface", default="eth0")
    p.add_argument("--address", required=True)
    p.add_argument("--lifetime", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--window", type=float, default=1.0)
    p.add_argument("--probe-timeout", type=float, help="default: the binder's (0.2 s); 1 s for the probe action")
    p.add_argument("--announce-count", type=int, default=2)
    p.add_argument("--announce-interval", type=float, default=0.05)
    p.add_argument("--cancel-after", type=float, default=0.1)
    p.add_argument("--slow-write", type=float, default=0)
    p.add_argument("--vanish-after", choices=["find"])
    p.add_argument("--not-after-in", type=float, help="bind's not_after: this many seconds from now (CLOCK_BOOTTIME)")
    p.add_argument("--max-files", type=int)
    args = p.parse_args()
    binder = NetlinkBinder(
        args.interface,
        ipaddress.ip_interface(args.address),
        Announce(count=args.announce_count, interval=args.announce_interval),
    )
    if args.probe_timeout is not None:
        binder.probe_timeout = args.probe_timeout
    add_seams(binder, args)
    if args.max_files is not None:
        open_now = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (open_now + args.max_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
    try:
        if args.action == "bind":
            not_after = None
            if args.not_after_in is not None:
                not_after = time.clock_gettime(time.CLOCK_BOOTTIME) + args.not_after_in
            result: object = await binder.bind(args.lifetime, force=args.force, not_after=not_after)
        elif args.action == "bind_announce":
            result = await binder.bind(args.lifetime, force=args.force)
            await binder.announce()
        elif args.action == "unbind":
            result = await binder.unbind()
        elif args.action == "is_bound":
            result = await binder.is_bound()
        elif args.action == "refresh":
            result = await binder.refresh(args.lifetime or 1)
        elif args.action == "announce":
            await binder.announce()
            result = True
        elif args.action == "probe":
            result = await binder.probe(args.probe_timeout or 1.0)
        elif args.action == "probe_until_clear":
            started = time.monotonic()
            mac = await binder.probe_until_clear(args.window)
            result = {"mac": mac, "elapsed": time.monotonic() - started}
        elif args.action == "cancel_bind":
            result = await cancelled(binder.bind(args.lifetime, force=args.force), args.cancel_after)
            result["unbound"] = await binder.unbind()
        elif args.action == "cancel_announce":
            result = await cancelled(binder.announce(), args.cancel_after)
        elif args.action == "cancel_probe":
            result = await cancelled(binder.probe(), args.cancel_after)
        elif args.action == "hold":  # bind with a lifetime and refresh it every second
            await binder.bind(args.lifetime, force=True)
            print(json.dumps({"ok": True, "result": "bound"}), flush=True)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                await binder.refresh(args.lifetime or 2)
            result = "released"
        else:
            raise SystemExit(f"unknown action {args.action}")
    except NetopsError as exc:
        print(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__}))
        return 1
    print(json.dumps({"ok": True, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
