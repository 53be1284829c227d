"""The HTTP endpoint on a running agent (in-memory store, fake binder and app): what monitoring and load
balancers see."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.http import make_app
from agent.roles import Role
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until


@pytest.fixture
async def active() -> AsyncIterator[tuple[Node, TestClient[Any, Any]]]:
    store = MemoryLeaseStore(clock=boottime)
    node = Node(config(ttl=3, heartbeat=0.5), "m1", store).start()
    await until(lambda: node.agent.role is Role.ACTIVE)
    client = TestClient(TestServer(make_app(node.agent)))
    await client.start_server()
    yield node, client
    await client.close()
    await node.kill()


async def test_active_node_answers_200_on_active_and_health_503_on_standby(
    active: tuple[Node, TestClient[Any, Any]],
) -> None:
    _, client = active
    assert (await client.get("/active")).status == 200
    assert (await client.get("/standby")).status == 503
    health = await client.get("/health")
    assert health.status == 200
    doc = await health.json()
    assert doc["role"] == "active" and doc["epoch"] == 1 and doc["app_healthy"] is True


async def test_metrics_expose_role_epoch_lease_renewals_app_and_ip(active: tuple[Node, TestClient[Any, Any]]) -> None:
    node, client = active
    first = node.agent.metrics.renew_latency._sum.get()
    await until(lambda: node.agent.metrics.renew_latency._sum.get() > first, 3, "a renewal")
    text = await (await client.get("/metrics")).text()
    assert 'fos_role{role="active"} 1.0' in text and 'fos_role{role="standby"} 0.0' in text
    assert "fos_epoch 1.0" in text
    assert "fos_renew_latency_seconds_count" in text and "fos_renew_failures_total 0.0" in text
    assert 'fos_transitions_total{to="active"} 1.0' in text
    assert "fos_app_healthy 1.0" in text
    left = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("fos_lease_seconds_left "))
    assert 0 < left <= 3


async def test_a_stalled_loop_makes_health_503(active: tuple[Node, TestClient[Any, Any]]) -> None:
    node, client = active
    node.agent.last_tick = node.agent.clock.now() - 10  # as if the loop had not ticked for 10 s
    node.agent._tick = lambda: None  # type: ignore[method-assign]
    resp = await client.get("/health")
    assert resp.status == 503 and "stalled" in (await resp.json())["problem"]
    assert (await client.get("/active")).status == 503


async def test_a_holder_that_cannot_renew_is_unhealthy(active: tuple[Node, TestClient[Any, Any]]) -> None:
    node, client = active
    store = node.agent.store
    assert isinstance(store, MemoryLeaseStore)
    store.available = False
    await until(lambda: node.agent.renew_failing, 3, "a failed renewal")
    resp = await client.get("/health")
    assert resp.status == 503 and "cannot renew" in (await resp.json())["problem"]
    store.available = True
    await until(lambda: not node.agent.renew_failing, 3, "renewals to recover")
    assert (await client.get("/health")).status == 200


async def test_status_shows_the_alias_url() -> None:
    store = MemoryLeaseStore(clock=boottime)
    cfg = dataclasses.replace(config(ttl=3, heartbeat=0.5), alias_url="http://helpdesk.example.com/")
    node = Node(cfg, "m1", store)
    client = TestClient(TestServer(make_app(node.agent)))
    await client.start_server()
    try:
        doc = await (await client.get("/status")).json()
        assert doc["alias_url"] == "http://helpdesk.example.com/"
    finally:
        await client.close()


async def test_health_url_credentials_never_reach_status() -> None:
    seen: list[str | None] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"http://fosmon:Hush-Health-7@127.0.0.1:{server.port}/health"
    store = MemoryLeaseStore(clock=boottime)
    node = Node(config(ttl=3, heartbeat=0.5, health={"http": url, "interval": 0.05, "timeout": 0.05}), "m1", store)
    node.start()
    client = TestClient(TestServer(make_app(node.agent)))
    await client.start_server()
    try:
        await until(lambda: node.agent.role is Role.ACTIVE and bool(seen), 5, "an active node that checked health")
        text = await (await client.get("/status")).text()
        assert "127.0.0.1" in text and "/health" in text  # the detail is there, only the credentials are not
        assert "Hush-Health-7" not in text and "fosmon" not in text
        assert seen[0] is not None and seen[0].startswith("Basic ")  # the credentials are still used
        # a failing check's detail (the exception text) is scrubbed too
        await server.close()
        await until(lambda: node.agent.health.last_detail.startswith("Client"), 5, "a failed health check")
        assert "Hush-Health-7" not in node.agent.health.last_detail
    finally:
        await client.close()
        await node.kill()
        await server.close()
