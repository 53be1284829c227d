"""The HTTP endpoint on a running agent (in-memory store, fake binder and app): what monitoring and load
balancers see, over real connections to agent.http's server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.http import HttpServer, start_server
from agent.roles import Role
from agent.runner import Agent
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until


class Client:
    """GETs against the agent's endpoint on 127.0.0.1 (raw HTTP/1.1, one connection each)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    async def raw(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        writer.write(request)
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    async def get(self, path: str) -> tuple[int, Any]:
        status, headers, body = await self.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert int(headers["content-length"]) == len(body)
        return status, json.loads(body) if headers["content-type"].startswith("application/json") else body.decode()

    async def status(self, path: str) -> int:
        return (await self.get(path))[0]


async def serve(agent: Agent) -> tuple[HttpServer, Client]:
    server = await start_server(agent, "127.0.0.1:0")
    return server, Client(server)


@pytest.fixture
async def active() -> AsyncIterator[tuple[Node, Client]]:
    store = MemoryLeaseStore(clock=boottime)
    node = Node(config(ttl=3, heartbeat=0.5), "m1", store).start()
    await until(lambda: node.agent.role is Role.ACTIVE)
    server, client = await serve(node.agent)
    yield node, client
    await server.cleanup()
    await node.kill()


async def test_active_node_answers_200_on_active_and_health_503_on_standby(
    active: tuple[Node, Client],
) -> None:
    _, client = active
    assert await client.status("/active") == 200
    assert await client.status("/standby") == 503
    code, doc = await client.get("/health")
    assert code == 200
    assert doc["role"] == "active" and doc["epoch"] == 1 and doc["app_healthy"] is True


async def test_metrics_expose_role_epoch_lease_renewals_app_and_ip(active: tuple[Node, Client]) -> None:
    node, client = active
    first = node.agent.metrics.renew_latency._sum.get()
    await until(lambda: node.agent.metrics.renew_latency._sum.get() > first, 3, "a renewal")
    code, text = await client.get("/metrics")
    assert code == 200
    assert 'fos_role{role="active"} 1.0' in text and 'fos_role{role="standby"} 0.0' in text
    assert "fos_epoch 1.0" in text
    assert "fos_renew_latency_seconds_count" in text and "fos_renew_failures_total 0.0" in text
    assert 'fos_transitions_total{to="active"} 1.0' in text
    assert "fos_app_healthy 1.0" in text
    left = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("fos_lease_seconds_left "))
    assert 0 < left <= 3


async def test_a_stalled_loop_makes_health_503(active: tuple[Node, Client]) -> None:
    node, client = active
    node.agent.last_tick = node.agent.clock.now() - 10  # as if the loop had not ticked for 10 s
    node.agent._tick = lambda: None  # type: ignore[method-assign]
    code, doc = await client.get("/health")
    assert code == 503 and "stalled" in doc["problem"]
    assert await client.status("/active") == 503


async def test_a_holder_that_cannot_renew_is_unhealthy(active: tuple[Node, Client]) -> None:
    node, client = active
    store = node.agent.store
    assert isinstance(store, MemoryLeaseStore)
    store.available = False
    await until(lambda: node.agent.renew_failing, 3, "a failed renewal")
    code, doc = await client.get("/health")
    assert code == 503 and "cannot renew" in doc["problem"]
    store.available = True
    await until(lambda: not node.agent.renew_failing, 3, "renewals to recover")
    assert await client.status("/health") == 200


async def test_status_shows_the_alias_url() -> None:
    store = MemoryLeaseStore(clock=boottime)
    cfg = dataclasses.replace(config(ttl=3, heartbeat=0.5), alias_url="http://helpdesk.example.com/")
    node = Node(cfg, "m1", store)
    server, client = await serve(node.agent)
    try:
        _, doc = await client.get("/status")
        assert doc["alias_url"] == "http://helpdesk.example.com/"
    finally:
        await server.cleanup()


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
    agent_server, client = await serve(node.agent)
    try:
        await until(lambda: node.agent.role is Role.ACTIVE and bool(seen), 5, "an active node that checked health")
        text = json.dumps((await client.get("/status"))[1])
        assert "127.0.0.1" in text and "/health" in text  # the detail is there, only the credentials are not
        assert "Hush-Health-7" not in text and "fosmon" not in text
        assert seen[0] is not None and seen[0].startswith("Basic ")  # the credentials are still used
        # a failing check's detail (the exception text) is scrubbed too
        await server.close()
        await until(lambda: node.agent.health.last_detail.startswith("Connection"), 5, "a failed health check")
        assert "Hush-Health-7" not in node.agent.health.last_detail
    finally:
        await agent_server.cleanup()
        await node.kill()
        await server.close()


async def test_head_is_answered_without_a_body_and_other_methods_or_paths_are_refused(
    active: tuple[Node, Client],
) -> None:
    _, client = active
    status, headers, body = await client.raw(b"HEAD /active HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""
    assert (await client.raw(b"POST /active HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))[0] == 405
    assert await client.status("/nothing-here") == 404
    assert (await client.raw(b"nonsense\r\n\r\n"))[0] == 400
    assert (await client.raw(b"GET /" + b"x" * 10000 + b" HTTP/1.1\r\n\r\n"))[0] == 431


async def test_a_client_that_never_finishes_its_request_does_not_hold_up_the_shutdown(
    active: tuple[Node, Client],
) -> None:
    _, client = active
    _, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /active HTTP/1.1\r\n")  # no end of the head: the server waits for more
    await asyncio.sleep(0.05)
    began = asyncio.get_running_loop().time()
    await client.server.cleanup()
    assert asyncio.get_running_loop().time() - began < 1.5
    writer.close()
