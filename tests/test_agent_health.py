"""Health checks against real peers: an HTTP server, a TCP port, a command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.clock import SystemClock
from agent.config import HealthConfig
from agent.health import STARTING_POLL_S, HealthCheck
from tests.support.dbservers import free_port
from tests.support.fakes import FakeApp


@pytest.fixture
async def http_peer() -> AsyncIterator[tuple[int, dict[str, int]]]:
    state = {"status": 200}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=state["status"], text="x")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, state
    await runner.cleanup()


def check(app: FakeApp | None = None, **cfg: object) -> HealthCheck:
    fake = app or FakeApp()
    return HealthCheck(HealthConfig(interval=0.05, timeout=0.3, failures=2, **cfg), fake, SystemClock())  # type: ignore[arg-type]


async def test_http_check_wants_2xx(http_peer: tuple[int, dict[str, int]]) -> None:
    port, state = http_peer
    hc = check(http=f"http://127.0.0.1:{port}/health")
    assert (await hc.check_once())[0]
    state["status"] = 500
    ok, detail = await hc.check_once()
    assert not ok and "500" in detail


async def test_tcp_check_needs_a_listener() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert (await check(tcp=port).check_once())[0]
    server.close()
    await server.wait_closed()
    assert not (await check(tcp=port).check_once())[0]


async def test_command_check_uses_the_exit_code_and_its_timeout() -> None:
    assert (await check(command="true").check_once())[0]
    assert not (await check(command="exit 1").check_once())[0]
    ok, detail = await check(command="sleep 5").check_once()
    assert not ok and "timed out" in detail


async def test_watch_reports_after_consecutive_failures(http_peer: tuple[int, dict[str, int]]) -> None:
    port, state = http_peer
    hc = check(http=f"http://127.0.0.1:{port}/health")
    state["status"] = 503
    reason = await asyncio.wait_for(hc.watch(), 3)
    assert "2 health checks failed in a row" in reason and hc.healthy is False


async def test_watch_reports_a_process_exit_at_once() -> None:
    app = FakeApp()
    app._running = True
    hc = check(app)
    task = asyncio.create_task(hc.watch())
    await asyncio.sleep(0.02)
    app.crash()
    assert await asyncio.wait_for(task, 1) == "the application process exited"


async def test_a_starting_app_is_polled_fast_whatever_the_interval() -> None:
    # With a 2 s interval, an app that listens after 0.3 s would be found healthy only after 2 s: the promotion
    # (and every failover) would wait that long. Until its first success it is checked every STARTING_POLL_S.
    port = free_port()
    hc = HealthCheck(HealthConfig(interval=2.0, timeout=0.3, failures=2, tcp=port), FakeApp(), SystemClock())
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def listen_later() -> asyncio.Server:
        await asyncio.sleep(0.3)
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    server = asyncio.create_task(listen_later())
    try:
        ok, detail = await asyncio.wait_for(hc.wait_healthy(10), 5)
        took = loop.time() - began
        assert ok and "accepts" in detail
        assert 0.3 <= took < 0.3 + STARTING_POLL_S + 0.15, f"healthy only after {took:.3f}s"
    finally:
        (await server).close()
