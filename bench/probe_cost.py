"""What the conflict probe costs a take-over: one probe round against a live owner (the answer's latency) and
a round in which nobody answers (the verdict "clear", which waits the whole cluster.probe_timeout), on the
namespace test bed, each through the binder as the agent calls it (probe_until_clear, in a process of its own);
and the owner's answer on the wire alone: from the probe's first ARP request to the answer, without the
interface look-up and the thread start before it (what cluster.probe_timeout must outlast). --load N runs N
busy-looping processes meanwhile (the CPU starved, as on a loaded host).

    .venv/bin/python bench/probe_cost.py [--reps 15] [--probe-timeout 0.2] [--load 0]
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


# From the first request sent to the answer, inside netops.arp.arp_probe (its probe loop timed around the send).
WIRE = """
import json, sys, time
from netops import arp
from netops.interfaces import find_interface
marks = {}
loop = arp.probe_loop
def timed(sock, send, answer, timeout, probes, stop=None):
    def first_send():
        marks.setdefault("sent", time.monotonic())
        return send()
    found = loop(sock, first_send, answer, timeout, probes, stop)
    marks["done"] = time.monotonic()
    return found
arp.probe_loop = timed
mac = arp.arp_probe("eth0", find_interface("eth0").mac, sys.argv[1], float(sys.argv[2]))
print(json.dumps({"mac": mac, "elapsed": marks["done"] - marks["sent"]}))
"""


def wire(host: Host, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-c", WIRE, VIP, f"{timeout:g}"]
    out = subprocess.run(host.argv(argv), capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
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
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes to run meanwhile")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/probe_cost.py needs root: it builds network namespaces")
    lan = Lan()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        m1, m2 = lan.add_host("m1"), lan.add_host("m2")
        nsbind(m1, "bind")
        answered = [probe(m2, args.probe_timeout) for _ in range(args.reps)]
        assert all(r["mac"] for r in answered), "the owner did not answer every probe"
        on_wire = [wire(m2, args.probe_timeout) for _ in range(args.reps)]
        assert all(r["mac"] for r in on_wire), "the owner did not answer every probe"
        nsbind(m1, "unbind")
        clear = [probe(m2, args.probe_timeout) for _ in range(args.reps)]
        assert not any(r["mac"] for r in clear), "something answered for a free address"
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        lan.close()
    rows = [
        row("an owner answers", [r["elapsed"] for r in answered]),
        row("an owner answers: first request to answer", [r["elapsed"] for r in on_wire]),
        row("nobody answers (clear)", [r["elapsed"] for r in clear]),
    ]
    columns = [("case", "case"), ("reps", "reps"), ("min_s", "min ms"), ("median_s", "median ms"), ("max_s", "max ms")]
    print(table([{**r, **{k: r[k] * 1000 for k in ("min_s", "median_s", "max_s")}} for r in rows], columns))
    print(f"saved {save('probe_cost', {'args': vars(args), 'results': rows})}")


if __name__ == "__main__":
    main()
