"""What the conflict probe costs a take-over: one probe round against a live owner (the answer's latency) and
a round in which nobody answers (the verdict "clear", which waits the whole cluster.probe_timeout), on the
namespace test bed, each through the binder as the agent calls it (probe_until_clear, in a process of its own).

    .venv/bin/python bench/probe_cost.py [--reps 15] [--probe-timeout 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, save, table

from tests.support.cluster import VIP
from tests.support.netns import Host, Lan


def probe(host: Host, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.support.nsbind", "probe_until_clear", "--address", f"{VIP}/24"]
    argv += ["--window", "0", "--probe-timeout", f"{timeout:g}"]
    out = subprocess.run(host.argv(argv), capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])["result"]
    return result


def nsbind(host: Host, action: str) -> None:
    argv = [sys.executable, "-m", "tests.support.nsbind", action, "--address", f"{VIP}/24", "--force"]
    subprocess.run(host.argv(argv), capture_output=True, timeout=30, cwd=ROOT, check=True)


def row(case: str, elapsed: list[float]) -> dict[str, Any]:
    return {
        "case": case,
        "reps": len(elapsed),
        "min_s": min(elapsed),
        "median_s": statistics.median(elapsed),
        "max_s": max(elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--probe-timeout", type=float, default=0.2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/probe_cost.py needs root: it builds network namespaces")
    lan = Lan()
    try:
        m1, m2 = lan.add_host("m1"), lan.add_host("m2")
        nsbind(m1, "bind")
        answered = [probe(m2, args.probe_timeout) for _ in range(args.reps)]
        assert all(r["mac"] for r in answered), "the owner did not answer every probe"
        nsbind(m1, "unbind")
        clear = [probe(m2, args.probe_timeout) for _ in range(args.reps)]
        assert not any(r["mac"] for r in clear), "something answered for a free address"
    finally:
        lan.close()
    rows = [
        row("an owner answers", [r["elapsed"] for r in answered]),
        row("nobody answers (clear)", [r["elapsed"] for r in clear]),
    ]
    columns = [("case", "case"), ("reps", "reps"), ("min_s", "min s"), ("median_s", "median s"), ("max_s", "max s")]
    print(table(rows, columns))
    print(f"saved {save('probe_cost', {'args': vars(args), 'results': rows})}")


if __name__ == "__main__":
    main()
