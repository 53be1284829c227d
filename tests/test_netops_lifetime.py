"""The kernel lateness G that the agent budgets (netops.KERNEL_LATENESS_S) covers what the kernel does, measured
on a namespace with an rtnetlink monitor: IPv4 and IPv6, quiet and with another address changed at a random
moment of the last second before expiry (the worst case: the kernel then waits a whole second before its next
lifetime check). A stress test with randomized phases and lifetimes; the seed is printed for a re-run."""

from __future__ import annotations

import json
import random

from netops import KERNEL_LATENESS_S
from tests.support.lateness import start_in
from tests.support.netns import Lan

QUIET, CHURNED = 2, 8
# The kernel may remove an address up to ADDRCONF_TIMER_FUZZ_MINUS = HZ/50 (20 ms) before its lifetime ends.
EARLY_S = 0.03


def test_the_kernel_removes_an_expired_address_within_the_budgeted_lateness(lan: Lan) -> None:
    host = lan.add_host("m1")
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    # in parallel: IPv4 and IPv6 lifetimes are checked by separate kernel timers
    procs = {family: start_in(host, family, QUIET, CHURNED, seed + family) for family in (4, 6)}
    for family, proc in procs.items():
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"IPv{family} measurement failed"
        samples = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for s in samples:
            print(f"IPv{family} lifetime {s['lifetime']} s churn {s['churn']} late {s['late_min']:.3f} {s['late']:.3f}")
        assert len(samples) == QUIET + CHURNED
        # The binder counts the lifetime from the moment its write returned (it re-checks the room after the write:
        # netops/binder.py _write), so G must cover the removal measured from there: late_min. `late`, measured from
        # before the write, adds the time the write itself waited for the RTNL lock.
        worst = max(s["late_min"] for s in samples)
        assert worst <= KERNEL_LATENESS_S, f"IPv{family}: removed {worst:.3f} s late, over G = {KERNEL_LATENESS_S}"
        assert min(s["late_min"] for s in samples) >= -EARLY_S, f"IPv{family}: removed before its lifetime ran out"
        # The churn must have hit: otherwise this test would not have measured the worst case at all.
        hit = [s for s in samples if s["churn"] is not None and s["late"] > 0.5]
        assert len(hit) >= 2, f"IPv{family}: the address churn never delayed a removal past 0.5 s"
