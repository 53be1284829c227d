"""A standby's promotion of the common IP, run inside a test host (`ip netns exec`) through the agent's own CommonIp
and the real NetlinkBinder: optionally a probe round ahead of the acquisition (CommonIp.probe_ahead), then the
claim of a lease whose acquisition was sent right before it. Prints one JSON line per step:

    {"step": "ahead", "clear": bool, "owner": ..., "took": s}      after the round ahead (unless --no-ahead)
    {"step": "claim", "ok": bool, "took": s, "since_ahead": s, "bound": bool, "conflict": ..., "log": [events]}

With --wait-for-go it reads one line from stdin between the two steps, so a test can change the LAN (another
host takes the address) after the round ahead and before the claim; --gap S then waits S more (a round ahead
that is no longer fresh at the acquisition).

    python -m tests.support.nsclaim --address A/P [--probe-timeout S] [--took-over] [--no-ahead]
        [--wait-for-go] [--gap S] [--claim-during-ahead S]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from typing import Any

from agent.clock import SystemClock
from agent.common_ip import CommonIp
from agent.config import parse
from agent.metrics import Metrics
from agent.roles import Holding
from netops import AddressConflict, Announce, NetlinkBinder

TTL, MARGIN = 4.0, 0.2


class ListLog:
    """A structlog-like logger that keeps (event, fields) for the test to read."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _keep(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    info = warning = error = debug = _keep


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--interface", default="eth0")
    p.add_argument("--address", required=True)
    p.add_argument("--probe-timeout", type=float, default=0.2)
    p.add_argument("--took-over", action="store_true")
    p.add_argument("--no-ahead", action="store_true")
    p.add_argument("--claim-during-ahead", type=float, help="start the round ahead as a task, claim S seconds later")
    p.add_argument("--wait-for-go", action="store_true")
    p.add_argument("--gap", type=float, default=0.0, help="seconds between the round ahead (or the go) and the claim")
    args = p.parse_args()
    address = ipaddress.ip_interface(args.address)
    cfg = parse(
        {
            "cluster": {"name": "c", "common_ip": str(address), "probe_timeout": args.probe_timeout},
            "nodes": [{"name": "m1", "interface": args.interface}, {"name": "m2", "interface": args.interface}],
            "database": {"dsn": "Driver=SQLite3;Database=/nonexistent/never-opened.db"},
            "lease": {"ttl": TTL, "heartbeat": 1, "fence_margin": MARGIN},
        }
    )
    binder = NetlinkBinder(args.interface, address, Announce(count=1, interval=0.05), probe_timeout=args.probe_timeout)
    clock, log = SystemClock(), ListLog()
    ip = CommonIp(cfg, binder, clock, Metrics(), log)
    if args.claim_during_ahead:  # the round ahead is still under way when the acquisition is sent
        ip.start_probe_ahead()
        await asyncio.sleep(args.claim_during_ahead)
    elif not args.no_ahead:
        started = clock.now()
        await ip.probe_ahead()
        assert ip.ahead is not None
        emit({"step": "ahead", "clear": ip.ahead.clear, "owner": ip.ahead.owner, "took": clock.now() - started})
    if args.wait_for_go:
        await asyncio.to_thread(sys.stdin.readline)
    await asyncio.sleep(args.gap)
    holding = Holding.acquired(1, clock.now(), TTL, MARGIN, args.took_over)  # the acquisition was sent just now
    since_ahead = None if ip.ahead is None else holding.last_sent - ip.ahead.ended_at
    started = clock.now()
    try:
        await ip.claim(holding, announce=False)
        conflict = None
    except AddressConflict as exc:
        conflict = str(exc)
    emit(
        {
            "step": "claim",
            "ok": conflict is None,
            "took": clock.now() - started,
            "since_ahead": since_ahead,
            "bound": await binder.is_bound(),
            "conflict": conflict,
            "log": log.events,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
