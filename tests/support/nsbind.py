"""Run one netops operation in the current network namespace and print the result as JSON; the tests start it
with `ip netns exec` so the binder works inside a test host.

    python -m tests.support.nsbind bind|unbind|is_bound|refresh|announce|probe|hold --interface eth0 --address A/P
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time

from netops import Announce, NetlinkBinder, NetopsError


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("action")
    p.add_argument("--interface", default="eth0")
    p.add_argument("--address", required=True)
    p.add_argument("--lifetime", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--seconds", type=float, default=0)
    args = p.parse_args()
    binder = NetlinkBinder(args.interface, ipaddress.ip_interface(args.address), Announce(count=2, interval=0.05))
    try:
        if args.action == "bind":
            result: object = await binder.bind(args.lifetime, force=args.force)
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
            result = await binder.probe(1.0)
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
