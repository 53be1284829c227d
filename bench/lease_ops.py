"""Lease-store throughput and latency on real databases: try_acquire and renew, with 1, 100 and 1000 lease
rows sharing one database. Starts its own throwaway PostgreSQL and MariaDB (as `make test` does).

    .venv/bin/python bench/lease_ops.py [--rows 1,100,1000] [--seconds 3] [--workers 8] [--only postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import databases, percentile, save, table

from lease import SqlLeaseStore

TTL_MS = 60_000


async def measure(dsn: str, dialect: str, rows: int, seconds: float, workers: int) -> dict[str, Any]:
    prefix = f"b{rows}x{random.randrange(10**6)}"
    clusters = [f"{prefix}-{i}" for i in range(rows)]
    setup = SqlLeaseStore(dsn, dialect=dialect, call_timeout=10)
    await setup.init_schema()
    acquire_ms: list[float] = []
    epochs: dict[str, int] = {}
    for c in clusters:
        t0 = time.perf_counter()
        got = await setup.try_acquire(c, "bench", TTL_MS)
        acquire_ms.append((time.perf_counter() - t0) * 1000)
        assert got.acquired
        epochs[c] = got.epoch
    for _ in range(max(0, 200 - rows)):  # at least 200 samples: re-acquire own lease (resume path)
        c = random.choice(clusters)
        t0 = time.perf_counter()
        got = await setup.try_acquire(c, "bench", TTL_MS)
        acquire_ms.append((time.perf_counter() - t0) * 1000)
        epochs[c] = got.epoch
    await setup.close()

    renew_ms: list[float] = []
    lost = 0
    stop = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        nonlocal lost
        rng = random.Random(seed)
        store = SqlLeaseStore(dsn, dialect=dialect, call_timeout=5)
        while time.monotonic() < stop:
            c = rng.choice(clusters)
            t0 = time.perf_counter()
            ok = await store.renew(c, "bench", epochs[c], TTL_MS)
            renew_ms.append((time.perf_counter() - t0) * 1000)
            lost += not ok
        await store.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    elapsed = time.monotonic() - started
    return {
        "db": dialect,
        "rows": rows,
        "workers": workers,
        "renew_per_s": len(renew_ms) / elapsed,
        "renew_p50_ms": percentile(renew_ms, 50),
        "renew_p99_ms": percentile(renew_ms, 99),
        "acquire_p50_ms": percentile(acquire_ms, 50),
        "acquire_p99_ms": percentile(acquire_ms, 99),
        "renewals_lost": lost,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with databases(args.only) as targets:
        for dialect, dsn in targets:
            for rows in args.rows:
                workers = 1 if dialect == "sqlite" else args.workers  # one writer at a time in SQLite anyway
                row = await measure(dsn, dialect, rows, args.seconds, workers)
                print(f"  {dialect:<10} rows={rows:<5} renew/s={row['renew_per_s']:.0f}", file=sys.stderr)
                results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,100,1000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--only", default="postgresql,mysql,sqlite", type=lambda s: s.split(","))
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(
        table(
            results,
            [
                ("db", "database"),
                ("rows", "lease rows"),
                ("workers", "workers"),
                ("renew_per_s", "renewals/s"),
                ("renew_p50_ms", "renew p50 ms"),
                ("renew_p99_ms", "renew p99 ms"),
                ("acquire_p50_ms", "acquire p50 ms"),
                ("acquire_p99_ms", "acquire p99 ms"),
                ("renewals_lost", "lost"),
            ],
        )
    )
    print(f"saved {save('lease_ops', {'args': vars(args), 'results': results})}")


if __name__ == "__main__":
    main()
