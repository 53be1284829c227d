"""A killed agent takes its supervised application with it (issue 9 item 15), from outside with real processes:
after SIGKILL of the active `fos run`, every process of its application's session (the keeper, the shell the
command runs in and the web app that shell started) is gone within a second, and the other node takes over."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import (
    WEBAPP,
    Cluster,
    assert_never_two_holders,
    clusters,
    served_by,
    session_members,
)
from tests.support.netns import Lan, wait_for
from tests.support.procs import alive

TTL, HEARTBEAT = 4, 1
APP_GONE_WITHIN = 1.0
# A shell that starts the web app as its child and waits: the application has a process of its own besides the
# one fos started, as a start script or a daemon has.
APP_WITH_CHILD = f'command = "{sys.executable} {WEBAPP} --port 8080 & wait"'


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def test_sigkill_of_the_active_agent_ends_its_application_and_its_child_within_a_second(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster("sqlite", app=APP_WITH_CHILD)
    c.active_pair()
    served_by(c, "m1", 0, 10)
    keeper = c.app_pid("m1")
    assert keeper is not None
    app = session_members(keeper)
    assert len(app) >= 3, f"expected the keeper, the shell and the web app in session {keeper}: {app}"
    killed = time.monotonic()
    c.agents["m1"].send_signal(signal.SIGKILL)
    c.agents["m1"].wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in app), 10, 0.01, f"the application's processes {app} to end")
    gone = time.monotonic() - killed
    at = served_by(c, "m2", killed, TTL + 10)
    print(
        f"SIGKILL of the active agent: its {len(app)} application processes were gone {gone:.2f}s later; "
        f"m2 served the client {at - killed:.2f}s after the kill"
    )
    assert gone < APP_GONE_WITHIN, f"the application outlived its agent by {gone:.2f}s"
    assert not session_members(keeper), "nothing of the application's session may remain"
    c.wait_role("m2", "active", 10)
    assert_never_two_holders(c)
