"""GET / and http.token on a running agent (in-memory store, fake binder and app), and the page's pure parts: the
take-over timeline, the control rows (the hook for issue #11's Control), escaping."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.http import make_app
from agent.page import Snapshot, control_rows, render, takeovers
from agent.roles import Role
from lease import Control, Event, LeaseState, NodeRecord, Switchover
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until

TOKEN = "page-token-0123456789abcdef"


async def _client(token: str | None) -> tuple[Node, TestClient[Any, Any]]:
    store = MemoryLeaseStore(clock=boottime)
    cfg = dataclasses.replace(config(ttl=3, heartbeat=0.5), http_token=token)
    node = Node(cfg, "m1", store).start()
    await until(lambda: node.agent.role is Role.ACTIVE)
    client = TestClient(TestServer(make_app(node.agent)))
    await client.start_server()
    return node, client


@pytest.fixture
async def open_page() -> AsyncIterator[TestClient[Any, Any]]:
    node, client = await _client(None)
    yield client
    await client.close()
    await node.kill()


@pytest.fixture
async def guarded() -> AsyncIterator[TestClient[Any, Any]]:
    node, client = await _client(TOKEN)
    yield client
    await client.close()
    await node.kill()


async def test_the_page_shows_the_holder_epoch_and_nodes_and_reloads_itself(open_page: TestClient[Any, Any]) -> None:
    resp = await open_page.get("/")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "<b id='holder'>m1</b>" in html and "<span id='epoch'>1</span>" in html
    assert (
        '<meta http-equiv="refresh" content="2">' in html
        and "<script" not in html
        and "http" not in html.split("<body>")[1]
    )
    assert "m1 (this page)" in html and "the lease was free" in html


async def test_without_a_token_status_and_metrics_are_open(open_page: TestClient[Any, Any]) -> None:
    for path in ("/status", "/metrics", "/health"):
        assert (await open_page.get(path)).status == 200


async def test_with_a_token_page_status_and_metrics_need_it_and_load_balancer_paths_stay_open(
    guarded: TestClient[Any, Any],
) -> None:
    for path in ("/", "/status", "/metrics"):
        assert (await guarded.get(path)).status == 401, path
        assert (await guarded.get(path, headers={"Authorization": "Bearer wrong-token-0000000"})).status == 401
        assert (await guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"})).status == 200, path
    assert (await guarded.get("/health")).status == 200
    assert (await guarded.get("/active")).status == 200
    assert (await guarded.get("/standby")).status == 503  # answered (m1 is active), not refused
    assert (await guarded.get("/status?token=" + TOKEN)).status == 401, "?token= is only for the page"


async def test_the_page_takes_the_token_once_and_keeps_it_in_an_httponly_cookie(guarded: TestClient[Any, Any]) -> None:
    resp = await guarded.get(f"/?token={TOKEN}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await guarded.get("/")  # the client's cookie jar sends it now
    html = await page.text()
    assert page.status == 200 and "<b id='holder'>m1</b>" in html and TOKEN not in html
    guarded.session.cookie_jar.clear()
    assert (await guarded.get("/?token=wrong-token-00000000", allow_redirects=False)).status == 401
    assert (await guarded.get("/")).status == 401


T0 = datetime(2026, 11, 26, 1, 0, 0, tzinfo=UTC)


def ev(id_: int, kind: str, node: str, epoch: int, dt: float, detail: str = "") -> Event:
    return Event(id_, "c", T0 + timedelta(seconds=dt), node, kind, epoch, detail)


def test_the_timeline_gives_each_acquisition_its_trigger_and_phases() -> None:
    events = [
        ev(1, "acquired", "m1", 1, 0, "the lease was free"),
        ev(2, "promoted", "m1", 1, 0.5),
        ev(3, "takeover", "m2", 2, 20, "m1 (epoch 1) expired 250 ms before the read"),
        ev(4, "ip_bound", "m2", 2, 20.1),
        ev(5, "promoted", "m2", 2, 21.0),
        ev(6, "released", "m2", 2, 30),
        ev(7, "acquired", "m1", 3, 30.2),
    ]
    got = [(t.node, t.epoch, t.trigger, t.before_s, t.ip_s, t.serving_s) for t in takeovers(list(reversed(events)))]
    assert got == [
        ("m1", 3, "released by m2", pytest.approx(0.2), None, None),
        ("m2", 2, "fault: the holder's lease expired", 0.25, pytest.approx(0.1), pytest.approx(1.0)),
        ("m1", 1, "the lease was free", None, None, pytest.approx(0.5)),
    ]


def test_control_rows_show_maintenance_disabled_flapping_and_a_pending_switchover() -> None:
    assert dict(control_rows(LeaseState("c", "m1", 3, 1000))) == {
        "maintenance": "off",
        "failover": "enabled",
        "switchover": "none pending",
    }
    control = Control(Switchover("m2", 30_000, "ops@h1", 100), 120_000, "ops@h1", None, None, 5, "4 in 1h")
    assert dict(control_rows(LeaseState("c", "m1", 3, 1000, control=control))) == {
        "maintenance": "ON for 120 s by ops@h1",
        "failover": "enabled",
        "anti-flap": "automatic failover OFF: 4 in 1h",
        "switchover": "to m2 in 30 s",
    }
    disabled = Control(None, None, None, 2_000, "ops@h2")
    assert (
        dict(control_rows(LeaseState("c", None, 3, None, control=disabled)))["failover"] == "DISABLED for 2 s by ops@h2"
    )


def test_every_value_on_the_page_is_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    snap = Snapshot(
        LeaseState("c", "m1", 1, 2000),
        [NodeRecord("c", "m1", "active", True, None, hostile, 0.1)],
        [ev(1, "takeover", "m1", 1, 0, hostile)],
        None,
    )
    html = render("c", "m1", {"role": hostile}, snap, 1.0)
    assert "<script>" not in html and "&lt;script&gt;" in html
