"""Two real `fos run` agents in network namespaces with an IPv6 common IP (fd00:213::100/64 on the LAN's ULA
prefix): the sampler reads family-10 addresses, the client probes the IPv6 address. A kill -9 of the active moves
the service after the TTL, a SIGTERM hands it over well under it, and the address is never on both nodes."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import VIP6, Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Lan

TTL, HEARTBEAT = 4, 1


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT, ipv6=True) as make:
        yield make


def serving_pair(c: Cluster) -> None:
    c.active_pair()
    served_by(c, "m1", 0, 10)
    assert c.sampler.holder_at(time.monotonic()) == ("m1",) and c.m1.has_address(VIP6)
    assert not c.m1.has_address("10.213.0.100"), "the common IP is the IPv6 one only"


def test_kill_9_of_the_active_moves_the_ipv6_common_ip_after_the_ttl(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster("postgresql")
    serving_pair(c)
    killed = time.monotonic()
    c.kill_agent("m1", with_app=True)
    at = served_by(c, "m2", killed, TTL + 10)
    m1_lost = c.sampler.last_time("m1")
    m2_got = c.sampler.first_time("m2", killed)
    assert m2_got is not None and m1_lost < m2_got
    print(
        f"[ipv6] kill -9: m1 lost the IP {m1_lost - killed:.2f}s after the kill (kernel lifetime), m2 bound it at "
        f"{m2_got - killed:.2f}s, the client was served by m2 {at - killed:.2f}s after the kill"
    )
    assert at - killed < TTL + 5
    c.wait_role("m2", "active", 10)
    assert_never_two_holders(c)


def test_sigterm_on_the_active_hands_the_ipv6_common_ip_over_well_under_the_ttl(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("sqlite")
    serving_pair(c)
    stopped = time.monotonic()
    c.agents["m1"].send_signal(signal.SIGTERM)
    assert c.agents["m1"].wait(timeout=15) == 0
    at = served_by(c, "m2", stopped, TTL + 5)
    m2_got = c.sampler.first_time("m2", stopped)
    assert m2_got is not None
    print(
        f"[ipv6] SIGTERM: m2 bound the IP {m2_got - stopped:.2f}s and served the client {at - stopped:.2f}s "
        "after the signal"
    )
    assert m2_got - stopped < TTL * 0.5, "a released lease must be taken well before the ttl"
    assert at - stopped < TTL * 0.5 + 1, "the client must reach the new node soon after it bound the IP"
    assert not c.m1.has_address(VIP6) and c.app_pid("m1") is None
    assert_never_two_holders(c)
