"""Warm standby on a real two-node namespace cluster (SQLite lease file, the demo web app, the client probing the
common IP): both nodes run the application; a take-over moves only the IP (the standby's application keeps its
process); a failed application makes its node step down and is restarted there; a standby whose application is
unhealthy lets the lease lapse rather than take it; SIGTERM of the active agent stops its application."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import WEBAPP, Cluster, assert_never_two_holders, clusters, served_by, session_members
from tests.support.netns import Lan, wait_for

TTL, HEARTBEAT = 4, 1


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def healthy(c: Cluster, name: str) -> bool:
    doc = c.status(name)
    return doc is not None and doc["app_healthy"] is True


def app_alive(c: Cluster, name: str) -> int | None:
    """The keeper pid of `name`'s application if its session still has processes, else None."""
    pid = c.app_pid(name)
    return pid if pid is not None and session_members(pid) else None


def node_rows(c: Cluster) -> dict[str, dict[str, object]]:
    out = c.fos("status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["app_mode"] == "warm"
    return {n["node"]: n for n in doc["nodes"]}


def warm_pair(c: Cluster) -> tuple[int, int]:
    """Start m1 (active), then m2 (standby) and wait until both applications are healthy; their keeper pids."""
    c.active_pair()
    wait_for(lambda: healthy(c, "m1") and healthy(c, "m2"), 20, 0.1, "both applications healthy")
    m1, m2 = c.app_pid("m1"), c.app_pid("m2")
    assert m1 is not None and m2 is not None and m1 != m2
    return m1, m2


def test_kill9_of_the_active_moves_only_the_ip_and_sigterm_stops_the_app(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster("sqlite", mode="warm")
    m1_app, m2_app = warm_pair(c)
    doc = c.status("m2")
    assert doc is not None and doc["role"] == "standby" and doc["app_mode"] == "warm"
    wait_for(lambda: node_rows(c)["m2"]["app_healthy"] is True, 10, 0.2, "m2's node row to show its app healthy")
    assert "application mode warm" in c.fos("status").stdout
    served_by(c, "m1", 0, 10)

    killed = time.monotonic()
    c.kill_agent("m1")  # its application dies with it (the keeper)
    at = served_by(c, "m2", killed, TTL + 10)
    print(f"warm kill -9: m2 served {at - killed:.2f}s after the kill")
    assert c.app_pid("m2") == m2_app and app_alive(c, "m2") == m2_app, "m2's application was restarted"
    c.wait_role("m2", "active", 10)
    wait_for(lambda: app_alive(c, "m1") is None, 5, 0.05, "m1's application to end with its agent")

    c.start("m1")  # back as a warm standby: its application starts at once
    wait_for(lambda: healthy(c, "m1") and c.role("m1") == "standby", 20, 0.1, "m1 a healthy standby")
    m1_again = app_alive(c, "m1")
    assert m1_again is not None and m1_again != m1_app

    stopped = time.monotonic()
    c.agents["m2"].send_signal(signal.SIGTERM)
    assert c.agents["m2"].wait(timeout=15) == 0
    served_by(c, "m1", stopped, 10)
    assert app_alive(c, "m2") is None, "the agent stopped: its application must stop too"
    assert app_alive(c, "m1") == m1_again, "m1 took over without restarting its application"
    assert_never_two_holders(c)


def test_an_app_failure_on_the_active_moves_the_ip_and_the_app_is_restarted_there(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("sqlite", mode="warm")
    m1_app, m2_app = warm_pair(c)
    served_by(c, "m1", 0, 10)
    failed = time.monotonic()
    os.killpg(m1_app, signal.SIGKILL)  # the application (its whole group) dies; the agent lives
    at = served_by(c, "m2", failed, 10)
    print(f"warm app failure: m2 served {at - failed:.2f}s after the app's death")
    assert app_alive(c, "m2") == m2_app
    wait_for(
        lambda: healthy(c, "m1") and c.role("m1") == "standby" and app_alive(c, "m1") not in (None, m1_app),
        20,
        0.1,
        "m1 a healthy standby again with a restarted application",
    )
    c.wait_role("m2", "active", 5)
    assert_never_two_holders(c)


def test_a_standby_with_a_failing_app_does_not_take_over_until_it_is_healthy(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    sick = tmp_path / "sick"
    # The application refuses to start on m2 while tmp/sick-m2 exists (FOS_NODE is in its environment).
    app = f'command = "test -e {sick}-$FOS_NODE && exit 3; exec {sys.executable} {WEBAPP} --port 8080"'
    c = make_cluster("sqlite", app=app, mode="warm")
    _, m2_app = warm_pair(c)
    Path(f"{sick}-m2").touch()
    os.killpg(m2_app, signal.SIGKILL)
    wait_for(lambda: c.status("m2") is not None and c.status("m2")["app_healthy"] is False, 10, 0.05, "m2 unhealthy")
    assert c.http_code("m2", "/standby") == 503
    wait_for(lambda: node_rows(c)["m2"]["app_healthy"] is False, 10, 0.2, "m2's node row to show its app failing")

    c.kill_agent("m1")
    wait_for(lambda: (c.lease().get("remaining_ms") or 0) < -1000, TTL + 10, 0.1, "the lease to be expired for 1s")
    lapsed = time.monotonic()
    assert c.lease()["holder"] == "m1" and c.role("m2") == "standby", "m2 took the lease with a failing app"
    # The killed holder's address lives until its kernel lifetime ends (before the expiry, which was >= 1 s before
    # `lapsed`): from then on nobody may have it, and nobody may answer on the common IP.
    gone = lapsed - 0.9
    assert c.sampler.holders_after(gone) == set() and c.prober.answers_after(gone) <= {"-"}

    Path(f"{sick}-m2").unlink()  # healthy again at its next restart (backoff): then it takes over
    at = served_by(c, "m2", lapsed, 40)
    print(f"m2 served {at - lapsed:.2f}s after its application could start again")
    assert app_alive(c, "m2") is not None
    assert_never_two_holders(c)
