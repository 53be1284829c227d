"""Footprint of an idle pair: one active and one standby agent at a 1 s heartbeat, the lease on PostgreSQL in
its own namespace host. Samples every 5 s: resident memory, CPU seconds, threads, open connections to the
database. Goals (issue #14), per agent, for the active and the standby: RSS at most 45 MB, CPU at most 0.5% of a
core over 10 idle minutes.

    .venv/bin/python bench/footprint.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save, table

from tests.support.cluster import Cluster
from tests.support.netns import Lan

TICKS = os.sysconf("SC_CLK_TCK")
GOAL_RSS_MB = 45.0
GOAL_CPU_PCT = 0.5


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
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
        start_cpu = {n: cpu_seconds(p) for n, p in pids.items()}
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in pids}
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            for n, p in pids.items():
                samples[n].append({"rss": rss_mb(p), "threads": threads(p), "conns": db_connections(p, port)})
            time.sleep(args.interval)
        elapsed = time.monotonic() - started
        rows = []
        for n, p in pids.items():
            cpu = cpu_seconds(p) - start_cpu[n]
            rows.append(
                {
                    "role": "active" if n == active else "standby",
                    "seconds": round(elapsed),
                    "rss_max_mb": max(s["rss"] for s in samples[n]),
                    "cpu_s": cpu,
                    "cpu_pct": 100 * cpu / elapsed,
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
        ("cpu_s", "CPU s"),
        ("cpu_pct", "CPU % of a core"),
        ("threads_max", "threads max"),
        ("db_conns_max", "DB connections max"),
        ("goals_met", f"RSS <= {GOAL_RSS_MB:g} MB and CPU <= {GOAL_CPU_PCT:g}%"),
    ]
    print(table(rows, columns))
    result: dict[str, Any] = {"args": vars(args), "results": rows}
    print(f"saved {save('footprint', result)}")


if __name__ == "__main__":
    main()
