"""Footprint of an idle pair: one active and one standby agent at a 1 s heartbeat, the lease on PostgreSQL in
its own namespace host. Samples every 5 s: resident memory (with its anonymous and file-backed parts: the
latter is mostly shared libraries, shared with every other process that maps them), CPU seconds (the whole
process and its main thread, the event loop; the rest is the database call threads and netlink), threads, open
connections to the database. Goals (issue #14), per agent, for the active and the standby: RSS at most 45 MB, CPU
at most 0.5% of a core over 10 idle minutes.

    .venv/bin/python bench/footprint.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, save, table

from tests.support.cluster import Cluster
from tests.support.netns import Lan

TICKS = os.sysconf("SC_CLK_TCK")
GOAL_RSS_MB = 45.0
GOAL_CPU_PCT = 0.5


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its parts RssAnon (the process's own heap, stacks, Python objects) and RssFile (mapped files:
    libraries, shared with other processes), in MB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                found[key] = int(line.split()[1]) / 1024
    return {"rss": found.get("VmRSS", 0.0), "anon": found.get("RssAnon", 0.0), "file": found.get("RssFile", 0.0)}


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of the process, or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def db_connections(pid: int, port: int) -> int:
    """TCP connections of this process whose remote port is the database's."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table_name in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table_name}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if int(parts[2].split(":")[1], 16) == port and parts[9] in inodes and parts[3] == "01":
                    count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--interval", type=float, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/footprint.py needs root: it builds network namespaces")
    lan = Lan()
    # Production-like health checking (every 2 s, the default), not the tests' fast 0.2 s.
    cluster = Cluster(lan, "postgresql", ttl=10, heartbeat=1, health_interval=2.0)
    try:
        active, standby = cluster.active_pair()
        assert cluster.db_server is not None
        port = cluster.db_server.port
        pids = {active: cluster.agents[active].pid, standby: cluster.agents[standby].pid}
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        start_cpu = {n: cpu_seconds(p) for n, p in pids.items()}
        start_loop = {n: cpu_seconds(p, p) for n, p in pids.items()}
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in pids}
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            for n, p in pids.items():
                samples[n].append({**memory_mb(p), "threads": threads(p), "conns": db_connections(p, port)})
            time.sleep(args.interval)
        elapsed = time.monotonic() - started
        rows = []
        for n, p in pids.items():
            cpu = cpu_seconds(p) - start_cpu[n]
            loop_cpu = cpu_seconds(p, p) - start_loop[n]
            rows.append(
                {
                    "role": "active" if n == active else "standby",
                    "seconds": round(elapsed),
                    "rss_max_mb": max(s["rss"] for s in samples[n]),
                    "rss_anon_max_mb": max(s["anon"] for s in samples[n]),
                    "rss_file_max_mb": max(s["file"] for s in samples[n]),
                    "cpu_s": cpu,
                    "cpu_pct": 100 * cpu / elapsed,
                    "loop_cpu_pct": 100 * loop_cpu / elapsed,
                    "threads_max": max(s["threads"] for s in samples[n]),
                    "db_conns_max": max(s["conns"] for s in samples[n]),
                }
            )
            rows[-1]["goals_met"] = rows[-1]["rss_max_mb"] <= GOAL_RSS_MB and rows[-1]["cpu_pct"] <= GOAL_CPU_PCT
        assert cluster.role(active) == "active" and cluster.role(standby) == "standby"
    finally:
        cluster.close()
        lan.close()
    columns: list[tuple[str, str]] = [
        ("role", "role"),
        ("seconds", "seconds"),
        ("rss_max_mb", "RSS max MB"),
        ("rss_anon_max_mb", "anon MB"),
        ("rss_file_max_mb", "file MB"),
        ("cpu_s", "CPU s"),
        ("cpu_pct", "CPU % of a core"),
        ("loop_cpu_pct", "of it main thread %"),
        ("threads_max", "threads max"),
        ("db_conns_max", "DB connections max"),
        ("goals_met", f"RSS <= {GOAL_RSS_MB:g} MB and CPU <= {GOAL_CPU_PCT:g}%"),
    ]
    print(table(rows, columns))
    # The commit the agents ran (save() names the file after HEAD when the run ends, which may be later).
    result: dict[str, Any] = {"args": vars(args), "code_commit": code.stdout.strip(), "results": rows}
    print(f"saved {save('footprint', result)}")


if __name__ == "__main__":
    main()
