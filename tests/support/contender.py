"""A lease contender for the multi-process race test: acquires, renews, releases and lets leases lapse at
random, and records the intervals in which it believed it held the lease (on CLOCK_REALTIME, which the database
servers of the test read too)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from lease import SqlLeaseStore, StoreError

# A holder may believe in its lease until send time + ttl, minus the clock-rate bound and the resolution of the
# database's timestamps (SQLite keeps milliseconds, so its now can read up to 1 ms before our send time).
RHO = 1e-3
RESOLUTION_S = 0.002


@dataclass(frozen=True)
class Piece:
    node: str
    epoch: int
    start: float
    end: float


@dataclass(frozen=True)
class Acquisition:
    node: str
    epoch: int
    at: float


async def _contend(
    dsn: str, dialect: str, cluster: str, node: str, seconds: float, ttl_ms: int, seed: int
) -> tuple[list[Piece], list[Acquisition], int]:
    rng = random.Random(seed)
    store = SqlLeaseStore(dsn, dialect=dialect, call_timeout=2.0)
    ttl = ttl_ms / 1000.0
    pieces: list[Piece] = []
    acquisitions: list[Acquisition] = []
    errors = 0
    epoch: int | None = None
    mine: list[Piece] = []
    stop = time.monotonic() + seconds

    def belief_end(sent: float) -> float:
        return sent + ttl * (1 - RHO) - RESOLUTION_S

    while time.monotonic() < stop:
        await asyncio.sleep(rng.uniform(0, 0.03))
        try:
            if epoch is None:
                sent = time.time()
                got = await store.try_acquire(cluster, node, ttl_ms)
                if got.acquired:
                    epoch = got.epoch
                    received = time.time()
                    acquisitions.append(Acquisition(node, epoch, received))
                    mine = [Piece(node, epoch, received, belief_end(sent))]
                continue
            roll = rng.random()
            if roll < 0.65:
                sent = time.time()
                if await store.renew(cluster, node, epoch, ttl_ms):
                    mine.append(Piece(node, epoch, time.time(), belief_end(sent)))
                else:
                    pieces += mine
                    epoch, mine = None, []
            elif roll < 0.8:
                sent = time.time()
                ok = await store.release(cluster, node, epoch)
                # After sending a release we no longer believe we hold it, whatever the answer.
                pieces += [Piece(p.node, p.epoch, p.start, min(p.end, sent)) for p in mine]
                epoch, mine = None, []
                del ok
            else:
                await asyncio.sleep(rng.uniform(0, ttl * 1.5))  # let the lease lapse now and then
        except StoreError:
            errors += 1
            pieces += mine
            epoch, mine = None, []
    pieces += mine
    await store.close()
    return pieces, acquisitions, errors


def run_process(
    args: tuple[str, str, str, list[str], float, int, int],
) -> tuple[list[Piece], list[Acquisition], int]:
    dsn, dialect, cluster, nodes, seconds, ttl_ms, seed = args

    async def main() -> tuple[list[Piece], list[Acquisition], int]:
        results = await asyncio.gather(
            *(_contend(dsn, dialect, cluster, n, seconds, ttl_ms, seed * 100 + i) for i, n in enumerate(nodes))
        )
        return (
            [p for r in results for p in r[0]],
            [a for r in results for a in r[1]],
            sum(r[2] for r in results),
        )

    return asyncio.run(main())
