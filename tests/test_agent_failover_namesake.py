"""A second `fos run` with the name of a live node, from outside, with real processes (issue 9 item 9): on
another host with its own state dir it is refused because the live agent's node row names another instance; on
the same host with the same state dir it is refused by the state dir lock. Either way it exits 2 with one line
and changes nothing: the common IP never leaves the live node, its application keeps its pid, no failover."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by, session_members
from tests.support.netns import Lan, holds_for, wait_for

TTL, HEARTBEAT = 4, 1


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def serving(c: Cluster) -> tuple[int, int]:
    """Start the pair, wait for m1 to serve; return (epoch, m1's application keeper pid)."""
    c.active_pair()
    served_by(c, "m1", 0, 10)
    status, app = c.status("m1"), c.app_pid("m1")
    assert status is not None and app is not None and session_members(app)
    return int(status["epoch"]), app


def failed(c: Cluster, since: float) -> int:
    return sum(1 for t, a in list(c.prober.answers) if t >= since and a == "-")


def assert_refused(out: subprocess.CompletedProcess[str], reason: str) -> None:
    assert out.returncode == 2, f"exit {out.returncode}, stderr: {out.stderr}"
    line = out.stderr.strip()
    assert line.count("\n") == 0 and reason in line, out.stderr


def assert_nothing_changed(c: Cluster, epoch: int, app: int, since: float) -> None:
    """For three heartbeats: m1 active with the same epoch and application, m2 standby; and from `since` on the
    IP was only ever on m1 and only m1 answered the client."""

    def unchanged() -> bool:
        status = c.status("m1")
        return (
            status is not None
            and status["role"] == "active"
            and status["epoch"] == epoch
            and c.app_pid("m1") == app
            and bool(session_members(app))
        )

    holds_for(unchanged, 3 * HEARTBEAT, 0.2, f"m1 active at epoch {epoch} with application {app}")
    assert c.role("m2") == "standby"
    assert c.sampler.holders_after(since) == {"m1"}, "the common IP must never move from m1"
    assert c.prober.answers_after(since) - {"-"} == {"m1"}, "only m1 may answer"
    # A short lapse of the IP on m1 itself is not the second agent's doing (see test_agent_failover_lapse.py).
    lapses = c.sampler.missing("m1", since)
    print(f"m1 unchanged; samples without the IP on m1: {len(lapses)}, failed client requests: {failed(c, since)}")
    assert_never_two_holders(c)


def test_a_second_agent_named_like_the_live_active_on_another_host_exits_2_and_changes_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("sqlite")
    epoch, app = serving(c)
    since = time.monotonic()
    out = c.run_once("m2", "m1", state_dir=os.path.join(c.work, "clone"))
    took = time.monotonic() - since
    print(f"a second m1 on m2's host exited {out.returncode} after {took:.2f}s: {out.stderr.strip()}")
    assert_refused(out, "another fos agent named m1 is running")
    live = re.search(r"agent_starting .*instance=(\S+)", c.log_text("m1"))
    assert live is not None and f"instance {live.group(1)}," in out.stderr, "the refusal names the live agent"
    assert_nothing_changed(c, epoch, app, since)


def test_a_second_agent_for_the_active_node_with_its_state_dir_exits_2_and_leaves_its_app_running(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("sqlite")
    epoch, app = serving(c)
    since = time.monotonic()
    out = c.run_once("m1", "m1")  # the same --state-dir as the live m1
    took = time.monotonic() - since
    print(f"a second m1 on m1's host, same state dir, exited {out.returncode} after {took:.2f}s: {out.stderr.strip()}")
    assert_refused(out, f"(pid {c.agents['m1'].pid})")
    assert "state dir" in out.stderr
    assert_nothing_changed(c, epoch, app, since)


def test_two_agents_with_one_name_on_two_hosts_never_both_hold_nor_take_the_lease_from_each_other(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Both start while the database is unreachable from their hosts (an agent then starts and waits for it), so
    # neither can see the other's node row at start: the start-up check cannot refuse either of them.
    c = make_cluster("postgresql")
    c.cut_db("m1")
    c.cut_db("m2")
    c.start("m1")
    clone = c.start("m1", on="m2", state_dir=os.path.join(c.work, "clone"), label="m1-clone")
    wait_for(
        lambda: all("database_unavailable_at_start" in c.log_text(n) for n in ("m1", "m1-clone")),
        20,
        0.05,
        "both agents to start without the database",
    )
    started = time.monotonic()
    c.restore_db("m1")
    c.restore_db("m2")
    holder = wait_for(lambda: c.sampler.holder_at(time.monotonic()), 20, 0.05, "one host to bind the common IP")
    assert len(holder) == 1
    served = served_by(c, "m1", started, 10)
    # Longer than two TTLs: two agents taking the lease from each other would move the IP within it.
    holds_for(lambda: c.sampler.holders_after(0) == set(holder), 2 * TTL + 1, 0.1, f"the IP only on {holder}")
    status = json.loads(c.fos("status", "--json").stdout)
    assert status["lease"]["epoch"] == 1, f"the lease changed hands: {status['lease']}"
    assert c.prober.answers_after(served) - {"-"} == {"m1"}
    print(f"samples without the IP on {holder[0]} after it served: {len(c.sampler.missing(holder[0], served))}")
    outcome = f"the other exited {clone.returncode}" if clone.poll() is not None else "the other kept waiting"
    print(f"one name on two hosts, both started: {holder[0]}'s host serves at epoch 1 for {2 * TTL + 1}s; {outcome}")
    assert_never_two_holders(c)
