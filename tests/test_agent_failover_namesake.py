"""A second `fos run` with the name of a live node, from outside, with real processes (issue 9 item 9): on
another host with its own state dir it is refused because the live agent's node row names another instance; on
the same host with the same state dir it is refused by the state dir lock. Either way it exits 2 with one line
and changes nothing: the common IP never leaves the live node, its application keeps its pid, no failover."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by, session_members
from tests.support.netns import Lan, holds_for

TTL, HEARTBEAT = 3, 1


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
    assert c.sampler.holders_after(since) == {"m1"}, "the common IP must never leave m1"
    assert c.prober.answers_after(since) == {"m1"}, "only m1 may answer, without a gap"
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
