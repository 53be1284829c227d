"""Many clusters sharing one lease database: N agents (as tasks in a few processes), each holding its own
cluster's lease and renewing it every heartbeat (1 s). Reports statements per heartbeat per agent, achieved
renewals/s, p50/p99 renew latency, and leases lost that should not have been; and the N at which p99 exceeds a
quarter of the heartbeat.

    .venv/bin/python bench/lease_scale.py [--agents 2,200,2000] [--seconds 20] [--processes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import databases, percentile, save, table

from lease import SqlLeaseStore, StoreError

HEARTBEAT = 1.0
TTL_MS = 60_000


async def _agents(dsn: str, dialect: str, names: list[str], seconds: float, connections: int) -> dict[str, Any]:
    store = SqlLeaseStore(dsn, dialect=dialect, call_timeout=5, max_connections=connections, max_idle=connections)
    # Every agent acquires its lease first (concurrently); the TTL is long enough that none expires before the
    # renewal phase starts, so a lost lease below means a renewal really came too late or was refused.
    epochs = dict(
        zip(
            names,
            [
                r.epoch
                for r in await asyncio.gather(*(store.try_acquire(n, "agent", TTL_MS, timeout=60) for n in names))
            ],
            strict=True,
        )
    )
    sent_before = store.statements_sent
    latencies: list[float] = []
    lost = errors = 0
    end = time.monotonic() + seconds

    async def agent(name: str) -> None:
        nonlocal lost, errors
        await asyncio.sleep(random.uniform(0, HEARTBEAT))
        next_at = time.monotonic()
        while next_at < end:
            t0 = time.monotonic()
            try:
                ok = await store.renew(name, "agent", epochs[name], TTL_MS)
                lost += not ok
            except StoreError:
                errors += 1
            latencies.append(time.monotonic() - t0)
            next_at = t0 + HEARTBEAT
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    started = time.monotonic()
    await asyncio.gather(*(agent(n) for n in names))
    elapsed = time.monotonic() - started
    statements = store.statements_sent - sent_before
    await store.close()
    return {"latencies": latencies, "lost": lost, "errors": errors, "elapsed": elapsed, "statements": statements}


def _process(args: tuple[str, str, list[str], float, int]) -> dict[str, Any]:
    return asyncio.run(_agents(*args))


def measure(dsn: str, dialect: str, n: int, seconds: float, processes: int) -> dict[str, Any]:
    prefix = f"s{n}x{random.randrange(10**6)}"
    names = [f"{prefix}-{i}" for i in range(n)]
    procs = max(1, min(processes, n))
    chunks = [names[i::procs] for i in range(procs)]
    connections = 1 if dialect == "sqlite" else max(2, min(32, 240 // procs))
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_process, [(dsn, dialect, c, seconds, connections) for c in chunks])
    lat = [x for p in parts for x in p["latencies"]]
    elapsed = max(p["elapsed"] for p in parts)
    renewals = len(lat)
    return {
        "db": dialect,
        "agents": n,
        "processes": procs,
        "connections": connections * procs,
        "renew_per_s": renewals / elapsed,
        "wanted_per_s": n / HEARTBEAT,
        "statements_per_heartbeat": sum(p["statements"] for p in parts) / max(1, renewals),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "lost": sum(p["lost"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="2,200,2000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--only", default="postgresql,mysql,sqlite", type=lambda s: s.split(","))
    parser.add_argument("--sqlite-max", type=int, default=200, help="largest N tried on SQLite")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with databases(args.only) as targets:
        for dialect, dsn in targets:
            setup = SqlLeaseStore(dsn, dialect=dialect, call_timeout=30)
            asyncio.run(setup.init_schema())
            for n in args.agents:
                if dialect == "sqlite" and n > args.sqlite_max:
                    continue
                row = measure(dsn, dialect, n, args.seconds, args.processes)
                print(
                    f"  {dialect:<10} N={n:<5} renew/s={row['renew_per_s']:.0f} p99={row['p99_ms']:.1f}ms",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    print(
        table(
            rows,
            [
                ("db", "database"),
                ("agents", "agents"),
                ("processes", "procs"),
                ("connections", "max conns"),
                ("renew_per_s", "renewals/s"),
                ("wanted_per_s", "wanted/s"),
                ("statements_per_heartbeat", "stmts/renewal"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("lost", "lost"),
                ("errors", "errors"),
            ],
        )
    )
    quarter = HEARTBEAT / 4 * 1000
    for dialect in {r["db"] for r in rows}:
        over = [r["agents"] for r in rows if r["db"] == dialect and r["p99_ms"] > quarter]
        print(
            f"{dialect}: p99 renew latency exceeds heartbeat/4 ({quarter:.0f} ms) at N = "
            f"{min(over) if over else 'none of the N tried'}"
        )
    print(f"saved {save('lease_scale', {'args': vars(args), 'results': rows})}")


if __name__ == "__main__":
    main()
