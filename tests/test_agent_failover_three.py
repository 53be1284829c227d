"""Three real `fos run` agents in network namespaces, the lease on PostgreSQL in its own host: when the active
agent is killed, exactly one of the two standbys takes over and the other stays a standby. The sampler and the
client prober see the common IP on at most one node at every instant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Lan, holds_for, wait_for

TTL, HEARTBEAT = 4, 1


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def test_kill_9_of_the_active_of_three_moves_the_service_to_exactly_one_standby(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("postgresql", nodes=3)
    c.start_all()
    served_by(c, "m1", 0, 10)
    assert c.http_code("m2", "/standby") == 200 and c.http_code("m3", "/standby") == 200
    epoch = (c.status("m1") or {})["epoch"]
    killed = time.monotonic()
    c.kill_agent("m1", with_app=True)
    new = str(
        wait_for(
            lambda: next((n for n in ("m2", "m3") if c.prober.first_answer_from(n, killed)), None),
            TTL + 10,
            0.02,
            "the client to be served by m2 or m3",
        )
    )
    other = "m3" if new == "m2" else "m2"
    at = served_by(c, new, killed, 1)
    got = c.sampler.first_time(new, killed)
    assert got is not None and c.sampler.last_time("m1") < got
    c.wait_role(new, "active", 10)
    print(
        f"three nodes, kill -9 of m1: {new} bound the IP {got - killed:.2f}s and served the client "
        f"{at - killed:.2f}s after the kill; {other} stayed standby"
    )

    def one_active_one_standby() -> bool:
        return c.role(new) == "active" and c.http_code(other, "/standby") == 200

    holds_for(one_active_one_standby, 2 * HEARTBEAT + 0.5, 0.2, f"{new} active and {other} standby")
    status = json.loads(c.fos("status", "--json").stdout)
    assert status["lease"]["holder"] == new and status["lease"]["epoch"] == epoch + 1
    roles = {n["node"]: n["role"] for n in status["nodes"]}
    assert roles[other] == "standby" and roles[new] == "active", roles
    assert other not in c.sampler.holders_after(0), f"{other} must never have bound the IP"
    assert other not in c.prober.answers_after(0) and "m1" not in c.prober.answers_after(at)
    assert_never_two_holders(c)
