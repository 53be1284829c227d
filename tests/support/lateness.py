"""Measure the kernel lateness G: how long after an address's valid lifetime ran out the kernel removes it.
Runs inside a test host (`ip netns exec NS python -m tests.support.lateness ...`) and prints one JSON line per
repetition: {"family", "lifetime", "churn", "late", "late_min"}.

Each repetition adds the address with a lifetime of 1 or 2 s and waits for its RTM_DELADDR event on an rtnetlink
monitor socket (no polling, no process starts in the measurement). With `--churn`, another address of the same
family is added and removed on the same interface at a random phase of the last second before expiry: that runs
the kernel's lifetime check at once and makes it wait at least a second before the next one (check_lifetime in
net/ipv4/devinet.c, addrconf_verify in net/ipv6/addrconf.c: ADDRCONF_TIMER_FUZZ_MAX = HZ), the worst case.

The monitor is a plain AF_NETLINK socket decoded by pyroute2's rtnl marshal rather than IPRoute.bind()/get():
select() on it is exact, while IPRoute buffers messages internally and a select on its fd can miss them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from tests.support.netns import Host

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IFA_F_NODAD = 0x02
ADDRESSES = {4: ("10.213.0.200", "10.213.0.201", 24), 6: ("fd00:213::200", "fd00:213::201", 64)}


@dataclass(frozen=True)
class Sample:
    family: int
    lifetime: int
    churn: float | None  # when the other address changed, relative to the expiry (s, negative = before)
    late: float  # upper bound: removal event received - (moment before the add + lifetime)
    late_min: float  # lower bound: the same from the moment after the add returned


class Monitor:
    """RTM_DELADDR events of one address, timestamped on CLOCK_MONOTONIC when they arrive."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.marshal = MarshalRtnl()

    def wait_deleted(self, ip: str, until: float) -> float | None:
        """The arrival time of the next RTM_DELADDR for `ip`, or None if none came by `until`."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            arrived = time.monotonic()
            for msg in self.marshal.parse(self.sock.recv(1 << 16)):
                if msg.get("event") == "RTM_DELADDR" and msg.get("IFA_ADDRESS") == ip:
                    return arrived

    def close(self) -> None:
        self.sock.close()


def measure(ipr: IPRoute, monitor: Monitor, index: int, family: int, lifetime: int, churn: float | None) -> Sample:
    ip, other, prefixlen = ADDRESSES[family]
    flags = {} if family == 4 else {"IFA_FLAGS": IFA_F_NODAD}
    info = {"ifa_preferred": lifetime, "ifa_valid": lifetime, "cstamp": 0, "tstamp": 0}
    before = time.monotonic()
    ipr.addr("add", index=index, address=ip, prefixlen=prefixlen, IFA_CACHEINFO=info, **flags)
    after = time.monotonic()
    if churn is not None:
        gone = monitor.wait_deleted(ip, before + lifetime + churn)
        if gone is None:  # the churn moment came first: another address changes on this interface
            ipr.addr("add", index=index, address=other, prefixlen=prefixlen, **flags)
            ipr.addr("del", index=index, address=other, prefixlen=prefixlen)
    else:
        gone = None
    gone = gone or monitor.wait_deleted(ip, before + lifetime + 10.0)
    if gone is None:
        raise RuntimeError(f"{ip} was still there 10 s after its {lifetime} s lifetime")
    return Sample(family, lifetime, churn, gone - before - lifetime, gone - after - lifetime)


def run(interface: str, family: int, quiet: int, churned: int, seed: int) -> list[Sample]:
    """`quiet` repetitions, then `churned` ones with the churn phases spread over the last second (stratified:
    one random phase in each of `churned` equal slices, so the worst phases, just before expiry, are covered)."""
    rng = random.Random(seed)
    plan: list[float | None] = [None] * quiet
    plan += [-(k + rng.random()) / churned for k in range(churned)]
    rng.shuffle(plan)
    monitor = Monitor()
    samples = []
    try:
        with IPRoute() as ipr:
            index = int(ipr.link_lookup(ifname=interface)[0])
            for churn in plan:
                sample = measure(ipr, monitor, index, family, rng.choice([1, 2]), churn)
                print(json.dumps(asdict(sample)), flush=True)
                samples.append(sample)
    finally:
        monitor.close()
    return samples


def start_in(host: Host, family: int, quiet: int, churned: int, seed: int) -> subprocess.Popen[str]:
    """Run this module's measurement inside a test host (its own namespace); JSON samples on its stdout."""
    argv = [sys.executable, "-m", "tests.support.lateness", "--family", str(family), "--quiet", str(quiet)]
    argv += ["--churn", str(churned), "--seed", str(seed)]
    return subprocess.Popen(host.argv(argv), cwd=_ROOT, stdout=subprocess.PIPE, text=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interface", default="eth0")
    p.add_argument("--family", type=int, choices=(4, 6), required=True)
    p.add_argument("--quiet", type=int, default=3, help="repetitions with no other address change")
    p.add_argument("--churn", type=int, default=8, help="repetitions with another address changed before expiry")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run(args.interface, args.family, args.quiet, args.churn, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
