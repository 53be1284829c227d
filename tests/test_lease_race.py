"""Many contenders in several processes hammer one lease; no two holds may overlap, epochs only grow, and
every acquisition is in the event history."""

from __future__ import annotations

import multiprocessing

from lease import EventKind, SqlLeaseStore
from tests.conftest import unique
from tests.support.contender import run_process

PROCESSES = 3
NODES_PER_PROCESS = 3
SECONDS = 4.0
TTL_MS = 250
ACQUIRING = {EventKind.ACQUIRED, EventKind.TAKEOVER, EventKind.RESUMED}


async def test_contenders_in_several_processes_never_hold_the_lease_at_once(
    store: SqlLeaseStore, dialect: str, dsns: dict[str, str]
) -> None:
    cluster = unique("race")
    jobs = [
        (dsns[dialect], dialect, cluster, [f"p{p}n{n}" for n in range(NODES_PER_PROCESS)], SECONDS, TTL_MS, p)
        for p in range(PROCESSES)
    ]
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        results = pool.map(run_process, jobs)
    pieces = [p for r in results for p in r[0]]
    acquisitions = sorted((a for r in results for a in r[1]), key=lambda a: a.at)
    errors = sum(r[2] for r in results)

    assert len(acquisitions) >= 10, f"only {len(acquisitions)} acquisitions: the race did not race"
    nodes = {a.node for a in acquisitions}
    assert len(nodes) >= 3, f"only {nodes} ever won"

    # No two holds (different node or epoch) believed at the same instant.
    pieces.sort(key=lambda p: p.start)
    overlaps = [
        (a, b)
        for i, a in enumerate(pieces)
        for b in pieces[i + 1 :]
        if b.start < a.end and (a.node, a.epoch) != (b.node, b.epoch) and a.start < b.end
    ]
    assert not overlaps, f"{len(overlaps)} overlapping holds, first: {overlaps[0]}"

    # Epochs strictly increase in the order the acquisitions happened, and none is used twice.
    epochs = [a.epoch for a in acquisitions]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)

    # Every acquisition a contender saw is in the event table, and the table's epochs go up by one.
    events = await store.list_events(cluster, limit=100000)
    acquired = sorted((e for e in events if e.kind in ACQUIRING), key=lambda e: e.id)
    assert {(a.node, a.epoch) for a in acquisitions} <= {(e.node, e.epoch) for e in acquired}
    assert [e.epoch for e in acquired] == list(range(1, len(acquired) + 1))
    assert errors < len(acquisitions), f"{errors} store errors against {len(acquisitions)} acquisitions"
