"""Wake-up hints between two real `fos run` agents in network namespaces (PostgreSQL in its own host): with a
long heartbeat (ttl 30 / heartbeat 10: a standby polls, and a holder reads its control state, every 5 s) a planned
move is acted on at once, measured between the database's own event times; with `cluster.wake_port = 0` no
node listens or sends. The sampler asserts the common IP was never bound on both nodes."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Lan, wait_for

TTL, HEARTBEAT = 30, 10  # a poll falls due up to heartbeat / 2 = 5 s after a release or a request
# "At once": with hints 0.01-0.03 s from a release to the acquisition, 0.1-0.35 s from a switchover request to the
# hand-over (the holder's let-go, the demo app's stop, on a loaded machine). Without them (main) a move meets this
# bound about 1 time in 5, two in a row 1 in 25.
PROMPT_S = 1.0


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def event_at(c: Cluster, kind: str, node: str | None, after: float = 0.0) -> float | None:
    """The database time (POSIX seconds) of the first `kind` event by `node` later than `after`."""
    for e in c.events(kind):
        at = datetime.fromisoformat(str(e["at"])).timestamp()
        if e["node"] == node and at > after:
            return at
    return None


def wait_event(c: Cluster, kind: str, node: str | None, after: float = 0.0, timeout: float = 20) -> float:
    return float(wait_for(lambda: event_at(c, kind, node, after), timeout, 0.1, f"a {kind} event by {node}"))


def metric(c: Cluster, node: str, name: str) -> float:
    """A counter of `node`'s /metrics (0 when absent), read from the client host."""
    url = f"http://{c.host(node).ip}:8470/metrics"
    code = f"import urllib.request;print(urllib.request.urlopen({url!r},timeout=2).read().decode())"
    out = c.client.run(sys.executable, "-c", code, timeout=10)
    found = re.search(rf"^{name}_total (\S+)$", out.stdout, flags=re.M)
    return float(found.group(1)) if found else 0.0


def udp_ports(c: Cluster, node: str) -> set[int]:
    """The UDP ports something listens on in `node`'s namespace."""
    out = c.host(node).run("ss", "-Hlun")
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.stdout.splitlines() if line.strip()}


def sigterm_move(c: Cluster, active: str, standby: str, after: float) -> float:
    """SIGTERM the active agent; the seconds from its release to the standby's acquisition (database times)."""
    c.agents[active].send_signal(signal.SIGTERM)
    assert c.agents[active].wait(timeout=20) == 0
    released = wait_event(c, "released", active, after)
    acquired = wait_event(c, "acquired", standby, after)
    c.wait_role(standby, "active")
    return acquired - released


def test_sigterm_wakes_the_standby_at_once_on_the_configured_port(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(cluster_keys="wake_port = 8471")  # not the default: the key sets the port
    c.active_pair()
    ports = udp_ports(c, "m2")
    served_by(c, "m1", 0, 10)
    first = sigterm_move(c, "m1", "m2", 0)
    received = metric(c, "m2", "fos_wake_hints_received")
    c.start("m1")
    c.wait_role("m1", "standby")
    second = sigterm_move(c, "m2", "m1", wait_event(c, "acquired", "m2"))
    print(f"SIGTERM, release -> acquisition by the other node: {first:.3f}s, {second:.3f}s (poll: {HEARTBEAT / 2}s)")
    assert first < PROMPT_S and second < PROMPT_S
    assert 8471 in ports and 8470 not in ports and received == 1
    assert_never_two_holders(c)


def test_a_switchover_command_wakes_the_holder_at_once(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    c.active_pair()
    served_by(c, "m1", 0, 10)
    delays, after = [], 0.0
    for holder, target in (("m1", "m2"), ("m2", "m1")):
        began = time.monotonic()
        out = c.fos("switchover", "--to", target)
        assert out.returncode == 0, out.stderr
        requested = wait_event(c, "switchover_requested", None, after)
        handed = wait_event(c, "handover", holder, after)
        at = served_by(c, target, began, 20)
        c.wait_role(target, "active")
        c.wait_role(holder, "standby")
        delays.append(handed - requested)
        after = handed
        print(
            f"switchover {holder} -> {target}: request -> handover {handed - requested:.3f}s (the holder's control "
            f"read: every {HEARTBEAT / 2}s), command launched -> served {at - began:.2f}s"
        )
    assert max(delays) < PROMPT_S
    assert metric(c, "m1", "fos_wake_hints_received") >= 1 and metric(c, "m2", "fos_wake_hints_received") >= 1
    assert_never_two_holders(c)


def test_wake_port_zero_listens_and_sends_nothing(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(cluster_keys="wake_port = 0")
    c.active_pair()
    assert 8470 not in udp_ports(c, "m1") | udp_ports(c, "m2")
    served_by(c, "m1", 0, 10)
    took = sigterm_move(c, "m1", "m2", 0)
    print(f"SIGTERM without hints: release -> acquisition {took:.3f}s (the next poll, within {HEARTBEAT / 2}s)")
    assert took < HEARTBEAT / 2 + 1
    assert metric(c, "m2", "fos_wake_hints_received") == 0 and metric(c, "m2", "fos_wake_hints_ignored") == 0
    assert_never_two_holders(c)
