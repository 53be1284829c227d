"""How late the kernel removes an address whose lifetime ran out (G in ../shared/design/timing.md), for IPv4 and
IPv6, on a quiet interface and with another address changed in the last second before expiry. Needs root: it
runs in a throwaway network namespace (tests/support/netns.py) with tests/support/lateness.py.

    sudo .venv/bin/python bench/kernel_lateness.py [--reps 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
from typing import Any

from common import ROOT, save, table

from netops import KERNEL_LATENESS_S
from tests.support import lateness
from tests.support.netns import Lan


def kernel_hz() -> str:
    """CONFIG_HZ of the running kernel, if its config is readable (the lifetime check's timer granularity)."""
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return line.strip().split("=", 1)[1]
        except OSError:
            continue
    return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20, help="repetitions per family and mode")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    lan = Lan()
    try:
        host = lan.add_host("m1")
        procs = {family: lateness.start_in(host, family, args.reps, args.reps, args.seed + family) for family in (4, 6)}
        samples: list[dict[str, Any]] = []
        for family, proc in procs.items():
            out, _ = proc.communicate(timeout=60 + 5 * args.reps)
            if proc.returncode != 0:
                raise SystemExit(f"IPv{family} measurement failed (exit {proc.returncode})")
            samples += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        lan.close()
    rows = []
    for family in (4, 6):
        for mode in ("quiet", "churn"):
            late = [s["late"] for s in samples if s["family"] == family and (s["churn"] is None) == (mode == "quiet")]
            rows.append(
                {
                    "case": f"IPv{family} {mode}",
                    "n": len(late),
                    "min": f"{min(late):.3f}",
                    "median": f"{statistics.median(late):.3f}",
                    "max": f"{max(late):.3f}",
                }
            )
    hz = kernel_hz()
    print(f"kernel {platform.release()}, HZ={hz}; seconds from lifetime end to RTM_DELADDR (upper bounds):")
    print(table(rows, [("case", "case"), ("n", "n"), ("min", "min"), ("median", "median"), ("max", "max")]))
    worst = max(float(r["max"]) for r in rows)
    print(f"worst {worst:.3f} s; netops.KERNEL_LATENESS_S = {KERNEL_LATENESS_S} s")
    print("saved", save("kernel_lateness", {"kernel": platform.release(), "hz": hz, "rows": rows, "samples": samples}))
    return 0 if worst <= KERNEL_LATENESS_S else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
