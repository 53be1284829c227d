"""Operations on two real `fos run` agents in network namespaces (lease on PostgreSQL in its own host, the
common IP sampled every ~10 ms, a client probing it every 20 ms): switchover and back, refused and failed
switchovers, scheduled, stale and cancelled ones; maintenance, disable/enable; fail-back and anti-flap. The
operator's intent is written with the lease store's own methods (what the `fos` commands call). Each scenario
asserts the common IP was never bound on both nodes at once. Lean on purpose: three cluster starts in all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Lan, holds_for, wait_for

TTL, HEARTBEAT = 4, 1
APP_START_S = 2.0  # the demo app's start and first healthy check on a loaded test machine, generously


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def kinds(c: Cluster) -> list[str]:
    return [e["kind"] for e in c.events()]


def switch(c: Cluster, to: str, due_in_ms: int = 0) -> float:
    """Request a switchover to `to`; return when it was asked (monotonic, the statement's sending)."""
    assert c.store_call("request_switchover", to, due_in_ms, "op@test") is True
    return c.last_call[0]


def test_switchover_there_and_back_refused_failed_scheduled_stale_and_cancelled(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster()
    c.active_pair()
    served_by(c, "m1", 0, 10)

    # m1 -> m2: the client's answer changes within a heartbeat plus the app's start; m2 took the handed-over
    # lease (not after a ttl), and recorded the switchover as done.
    asked = switch(c, "m2")
    at = served_by(c, "m2", asked, HEARTBEAT + APP_START_S + 2)
    print(f"switchover m1 -> m2: the client was answered by m2 {at - asked:.2f}s after the request")
    assert at - asked < HEARTBEAT + APP_START_S
    wait_for(lambda: "switchover_done" in kinds(c), 5, 0.2, "SWITCHOVER_DONE")
    assert c.role("m1") == "standby" and "handover" in kinds(c)

    # ... and back, with the command: `--wait` returns once m1 serves.
    c.wait_role("m1", "standby")
    began = time.monotonic()
    out = c.fos("switchover", "--to", "m1", "--wait")
    assert out.returncode == 0 and "m1 serves" in out.stdout, out.stdout + out.stderr
    at = served_by(c, "m1", began, 5)
    print(f"fos switchover --to m1 --wait: {out.stdout.strip().splitlines()[-1]}; client at {at - began:.2f}s")
    c.wait_role("m2", "standby")

    # Scheduled: not before its time, and within a fraction of a heartbeat after it (the holder wakes for it).
    asked = switch(c, "m2", due_in_ms=3000)
    holds_for(lambda: c.sampler.holder_at(time.monotonic()) == ("m1",), 2.5, 0.1, "m1 keeps the IP until the time")
    wait_for(lambda: "m1" not in c.sampler.holder_at(time.monotonic()), 5, 0.02, "m1 lets go at the time")
    let_go = c.sampler.last_time("m1") - asked
    print(f"scheduled in 3 s: m1 let go of the IP {let_go:.2f}s after the request")
    assert 3.0 <= let_go < 3.0 + 0.5 * HEARTBEAT + 0.3
    served_by(c, "m2", asked, 10)
    c.wait_role("m1", "standby")

    # Stale: the holder (frozen) first sees it more than two heartbeats after its time -> dropped with its
    # event, nothing moves. (Frozen for less than the ttl: it renews at once on thaw.)
    c.agents["m2"].send_signal(signal.SIGSTOP)
    try:
        switch(c, "m1")
        time.sleep(2.4)
    finally:
        c.agents["m2"].send_signal(signal.SIGCONT)
    wait_for(lambda: "switchover_stale" in kinds(c), 5, 0.2, "SWITCHOVER_STALE")
    assert c.roles() == {"m1": "standby", "m2": "active"}
    # Cancelled before its time -> nothing moves at its time.
    switch(c, "m1", due_in_ms=2000)
    assert c.store_call("cancel_switchover", "op@test") is True
    holds_for(lambda: c.roles() == {"m1": "standby", "m2": "active"}, 3, 0.2, "nothing moves after a cancel")

    # To a node that is not running: the holder refuses it (SWITCHOVER_FAILED) and keeps serving.
    c.kill_agent("m1")
    wait_for(
        lambda: (
            (r := next(n for n in c.store_call("list_nodes") if n["node"] == "m1"))["last_seen_age_s"] > 3.6
            and r is not None
        ),
        10,
        0.2,
        "m1's row to age past three heartbeats",
    )
    failed_before = kinds(c).count("switchover_failed")
    switch(c, "m1")
    wait_for(lambda: kinds(c).count("switchover_failed") > failed_before, 5, 0.2, "SWITCHOVER_FAILED")
    assert c.role("m2") == "active" and c.sampler.holder_at(time.monotonic()) == ("m2",)

    # The target dies after the holder handed over: frozen (its row still fresh) when asked, killed once the
    # lease is handed to it. The old holder serves again within a normal failover (the reservation is a ttl).
    c.start("m1")
    c.wait_role("m1", "standby")
    # Its /status says standby a moment before its first node row is written: freeze it only once the holder
    # can see it alive (a row written by this start), or the holder rightly refuses a target it has not seen.
    wait_for(
        lambda: next(n for n in c.store_call("list_nodes") if n["node"] == "m1")["last_seen_age_s"] < 1.0,
        10,
        0.2,
        "m1's row written by its new agent",
    )
    c.agents["m1"].send_signal(signal.SIGSTOP)
    handovers = kinds(c).count("handover")
    switch(c, "m1")
    wait_for(lambda: kinds(c).count("handover") > handovers, 5, 0.1, "the handover to the frozen m1")
    c.kill_agent("m1")
    released = c.sampler.last_time("m2")
    back = served_by(c, "m2", released, TTL + APP_START_S + 5)
    print(f"target died after the handover: m2 served again {back - released:.2f}s after dropping the IP")
    assert back - released < TTL + APP_START_S + 1
    assert_never_two_holders(c)


def test_maintenance_holds_everything_still_and_disable_lets_nobody_serve(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster()
    c.active_pair()
    served_by(c, "m1", 0, 10)

    def sees(node: str) -> str | None:
        return next((n["sees"] for n in c.store_call("list_nodes") if n["node"] == node), None)

    # Maintenance on (`--wait`: both agents acknowledged), then the active app killed: no failover, no restart.
    out = c.fos("maintenance", "on", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert sees("m1") == "maintenance" and sees("m2") == "maintenance"
    doc = c.status("m2")
    assert doc is not None and doc["control"]["maintenance"] is True
    app = c.app_pid("m1")
    assert app is not None
    os.killpg(app, signal.SIGKILL)
    holds_for(
        lambda: c.roles() == {"m1": "active", "m2": "standby"} and c.app_pid("m1") == app,
        TTL + 2,
        0.2,
        "no failover and no restart during maintenance",
    )
    assert c.lease()["holder"] == "m1" and c.sampler.holder_at(time.monotonic()) == ("m1",)

    # Off: the holder reconciles from the real state (the app is not running: start it here).
    off = time.monotonic()
    assert c.store_call("set_maintenance", False, "op@test") is True
    served_by(c, "m1", off, HEARTBEAT + APP_START_S + 2)
    assert c.app_pid("m1") not in (None, app) and c.role("m2") == "standby"

    # SIGTERM during maintenance leaves the app (and the IP) running and the lease held; the restarted agent
    # adopts the app instead of ending it, and the standby never takes over.
    assert c.store_call("set_maintenance", True, "op@test") is True
    wait_for(lambda: sees("m1") == "maintenance", 5, 0.2, "m1 acknowledged")
    app = c.app_pid("m1")
    c.agents["m1"].send_signal(signal.SIGTERM)
    assert c.agents["m1"].wait(timeout=15) == 0
    assert app is not None and os.getpgid(app) == app, "the app outlived its agent"
    c.start("m1")
    c.wait_role("m1", "active", 20)
    assert c.app_pid("m1") == app and "app_adopted" in c.log_text("m1")
    assert c.role("m2") == "standby" and c.lease()["holder"] == "m1"
    served_by(c, "m1", time.monotonic(), 10)
    assert c.store_call("set_maintenance", False, "op@test") is True

    # Disable: the holder lets go cleanly, nobody serves, both keep running and say so; enable: one serves.
    assert c.fos("disable").returncode == 0
    wait_for(lambda: not c.sampler.holder_at(time.monotonic()), 5, 0.05, "the IP gone")
    wait_for(lambda: sees("m1") == "disabled" and sees("m2") == "disabled", 5, 0.2, "both report disabled")
    holds_for(
        lambda: not c.sampler.holder_at(time.monotonic()) and c.roles() == {"m1": "standby", "m2": "standby"},
        TTL + 1,
        0.2,
        "nobody serves while disabled",
    )
    assert c.lease()["holder"] is None and c.agents["m1"].poll() is None and c.agents["m2"].poll() is None
    enabled = time.monotonic()
    assert c.fos("enable").returncode == 0
    wait_for(lambda: sorted(c.roles().values()) == ["active", "standby"], 10, 0.1, "one serves again")
    print(f"enable: one node serves {time.monotonic() - enabled:.2f}s later")
    assert_never_two_holders(c)


def test_auto_fail_back_after_the_delay_and_anti_flap_until_enable(make_cluster: Callable[..., Cluster]) -> None:
    delay = 6
    c = make_cluster(
        cluster_keys=f'failback = "auto"\nfailback_delay = {delay}',
        priorities={"m1": 10},
        tables="[flap]\nmax_takeovers = 1\nwindow = 3600",
    )
    # m2 (priority 0) serves first; m1 (priority 10) joins and takes the role back after the delay, not before.
    c.start("m2")
    c.wait_role("m2", "active")
    c.start("m1")
    c.wait_role("m1", "standby")
    joined = time.monotonic()
    at = served_by(c, "m1", joined, delay + HEARTBEAT + APP_START_S + 5)
    print(f"fail-back: m1 served {at - joined:.2f}s after it became standby (delay {delay}s)")
    assert at - joined >= delay
    assert any(e["kind"] == "switchover_requested" and "failback" in (e["detail"] or "") for e in c.events())
    c.wait_role("m2", "standby")

    # Anti-flap: two take-overs (step-downs for a dead app) with max_takeovers = 1 turn failover off.
    os.killpg(c.app_pid("m1") or 0, signal.SIGKILL)
    served_by(c, "m2", time.monotonic(), 20)
    wait_for(lambda: c.role("m1") == "standby", 20, 0.2, "m1's hold-off over")
    os.killpg(c.app_pid("m2") or 0, signal.SIGKILL)
    served_by(c, "m1", time.monotonic(), 20)
    wait_for(lambda: "flapping" in kinds(c), 10, 0.2, "FLAPPING")
    wait_for(lambda: c.lease()["control"]["failover_off_ms"] is not None, 5, 0.2, "failover off")
    doc = c.status("m1")
    assert doc is not None and doc["control"]["failover_off"] is True
    # Failover off: the holder's app dies -> restarted in place, never moved.
    wait_for(lambda: c.role("m2") == "standby", 20, 0.2, "m2's hold-off over")
    app = c.app_pid("m1")
    os.killpg(app or 0, signal.SIGKILL)
    wait_for(lambda: c.app_pid("m1") not in (None, app), 15, 0.1, "m1's app restarted in place")
    served_by(c, "m1", time.monotonic(), 10)
    assert c.role("m2") == "standby"
    # `fos enable` clears it: a failure moves the service again.
    assert c.store_call("set_disabled", False, "op@test") is True
    assert c.lease()["control"]["failover_off_ms"] is None
    wait_for(lambda: (c.status("m1") or {}).get("control", {}).get("failover_off") is False, 5, 0.2, "m1 saw it")
    os.killpg(c.app_pid("m1") or 0, signal.SIGKILL)
    served_by(c, "m2", time.monotonic(), 20)
    assert_never_two_holders(c)
