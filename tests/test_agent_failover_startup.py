"""Starting a cluster from outside on a database prepared for another cluster (issue 9 item 1): `fos init-db` ran
for cluster "a", the agents are configured for cluster "b". `fos run` creates b's lease row itself, one node
serves, and no agent spins: each uses a small fraction of a core, measured from /proc/PID/stat."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, cpu_seconds, served_by
from tests.support.netns import Lan, wait_for

TTL, HEARTBEAT = 4, 1
CPU_WINDOW = 3.0  # seconds of CPU accounting per agent
MAX_CPU_SHARE = 0.2  # of one core: an agent that loops without a bounded wait uses nearly all of one


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def cpu_shares(pids: dict[str, int], window: float) -> dict[str, float]:
    """Each process's CPU use over the same `window` seconds, as a share of one core."""
    before, start = {n: cpu_seconds(p) for n, p in pids.items()}, time.monotonic()
    time.sleep(window)  # the measurement window itself, not a wait for a condition
    elapsed = time.monotonic() - start
    return {n: (cpu_seconds(p) - before[n]) / elapsed for n, p in pids.items()}


@pytest.mark.parametrize("database_at_start", ["reachable", "unreachable"])
def test_agents_of_a_cluster_without_its_lease_row_create_it_serve_and_do_not_spin(
    make_cluster: Callable[..., Cluster], database_at_start: str
) -> None:
    # Unreachable at start: the agents skip the start-up check (which would create the row) and wait for the
    # database, so the row is still missing when they first compete for the lease.
    c = make_cluster("sqlite" if database_at_start == "reachable" else "postgresql", name="b", init_db_as="a")
    before = json.loads(c.fos("status", "--json").stdout)
    assert before["lease"] is None, f"cluster b must have no lease row yet: {before['lease']}"
    if database_at_start == "unreachable":
        c.cut_db("m1")
        c.cut_db("m2")
    c.start("m1")
    c.start("m2")
    if database_at_start == "unreachable":
        wait_for(
            lambda: all("database_unavailable_at_start" in c.log_text(n) for n in ("m1", "m2")),
            20,
            0.05,
            "both agents to start without the database",
        )
        c.restore_db("m1")
        c.restore_db("m2")
    wait_for(
        lambda: sorted([c.role("m1") or "", c.role("m2") or ""]) == ["active", "standby"],
        30,
        0.1,
        "one active and one standby",
    )
    active = "m1" if c.role("m1") == "active" else "m2"
    standby = "m2" if active == "m1" else "m1"
    served_by(c, active, 0, 10)
    after = json.loads(c.fos("status", "--json").stdout)
    assert after["lease"]["holder"] == active and after["lease"]["epoch"] == 1, after["lease"]
    shares = cpu_shares({n: c.agents[n].pid for n in (active, standby)}, CPU_WINDOW)
    print(
        f"cluster b on a database initialised for a, {database_at_start} at start: {active} serves; "
        f"CPU over {CPU_WINDOW:g}s: active {shares[active]:.1%}, standby {shares[standby]:.1%} of a core"
    )
    assert shares[standby] < MAX_CPU_SHARE, f"the standby agent spins: {shares[standby]:.0%} of a core"
    assert shares[active] < MAX_CPU_SHARE, f"the active agent spins: {shares[active]:.0%} of a core"
    assert c.role(standby) == "standby" and c.http_code(standby, "/standby") == 200
    assert_never_two_holders(c)
