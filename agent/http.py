"""The agent's read-only HTTP endpoint for monitoring and load balancers.

GET /health   200 while the loop is alive and consistent; 503 if it stalled, or if we hold the lease but
              renewals are failing
GET /active   200 only on the node that holds the lease, has the common IP bound and a healthy app
GET /standby  200 on a node that is a ready standby
GET /status   JSON of the agent's view
GET /metrics  Prometheus text

Served on asyncio streams: five read-only GETs (and HEADs), one request per connection, need no web framework,
and aiohttp cost each agent about 12 MB of memory (100 modules), a quarter of its footprint budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .clock import within
from .roles import Role
from .runner import Agent

MAX_REQUEST_HEAD = 8192  # request line and headers; a longer one is refused (431)
READ_TIMEOUT_S = 5.0  # a client that sends no complete request head within this is dropped
SHUTDOWN_TIMEOUT_S = 1.0  # never let a lingering client connection hold up a graceful stop
JSON = "application/json; charset=utf-8"


def status(agent: Agent) -> dict[str, Any]:
    now = agent.clock.now()
    return {
        "cluster": agent.cfg.cluster,
        "alias_url": agent.cfg.alias_url,
        "node": agent.node.name,
        "version": __version__,
        "role": agent.role.value,
        "reason": agent.transition_reason,
        "epoch": agent.epoch,
        "fence_in_s": None if agent.fence_at is None else round(agent.fence_at - now, 3),
        "renew_failing": agent.renew_failing,
        "common_ip": str(agent.cfg.common_ip) if agent.cfg.common_ip else None,
        "ip_bound": agent.ip_bound,
        "app_healthy": agent.health.healthy,
        "app_detail": agent.health.last_detail,
        "loop_age_s": round(now - agent.last_tick, 3),
        **lease_seen(agent),
        "replication": replication_seen(agent),
    }


def replication_seen(agent: Agent) -> dict[str, object] | None:
    """How old this node's installation copy was when it last took over (fos mirror), if replication is on."""
    schedule = agent.replication
    if schedule is None or schedule.last_freshness is None:
        return None
    return schedule.last_freshness.as_dict()


def lease_seen(agent: Agent) -> dict[str, Any]:
    """Who holds the lease, as this agent last saw it: itself while holding, else its last read."""
    if agent.holding is not None:
        return {"lease_holder": agent.node.name, "lease_epoch": agent.holding.epoch}
    view = agent.lease_view
    if view is None:
        return {"lease_holder": None, "lease_epoch": None}
    return {"lease_holder": view.holder if view.held else None, "lease_epoch": view.epoch}


def loop_stalled(agent: Agent) -> bool:
    # The loop ticks at least every heartbeat / 2 in every role; three missed ticks mean it is stuck.
    return agent.clock.now() - agent.last_tick > max(1.5 * agent.cfg.lease.heartbeat, 1.0)


def is_active(agent: Agent) -> bool:
    # The fence deadline too: with address_driver = "none" this answer is the only fence a load balancer has, and
    # a request queued while the agent was frozen must not be told "active" before the loop could fence.
    fence_at = agent.fence_at
    return (
        agent.role is Role.ACTIVE
        and fence_at is not None
        and agent.clock.now() < fence_at
        and agent.ip_bound_or_unmanaged()
        and agent.health.healthy is True
    )


Response = tuple[int, str, bytes]  # status, content type, body


def _json(doc: dict[str, Any], status: int = 200) -> Response:
    return status, JSON, json.dumps(doc).encode()


def routes(agent: Agent) -> dict[str, Callable[[], Response]]:
    """The endpoints: path -> the response, computed from the agent's state at the time of the request."""

    def health() -> Response:
        doc = status(agent)
        if loop_stalled(agent):
            return _json({**doc, "problem": "the agent loop stalled"}, 503)
        if agent.role in (Role.ACTIVE, Role.PROMOTING) and agent.renew_failing:
            return _json({**doc, "problem": "holding the lease but cannot renew it"}, 503)
        return _json(doc)

    def active() -> Response:
        ok = is_active(agent) and not loop_stalled(agent)
        return _json(status(agent), 200 if ok else 503)

    def standby() -> Response:
        ok = agent.role is Role.STANDBY and not loop_stalled(agent)
        return _json(status(agent), 200 if ok else 503)

    def metrics() -> Response:
        return 200, CONTENT_TYPE_LATEST, agent.metrics.render()

    return {
        "/health": health,
        "/active": active,
        "/standby": standby,
        "/status": lambda: _json(status(agent)),
        "/metrics": metrics,
    }


def respond(table: dict[str, Callable[[], Response]], head: bytes) -> tuple[Response, bool]:
    """The response to one request head (request line and headers), and whether to send its body (not for HEAD)."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return (400, "text/plain", b"bad request\n"), True
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return (405, "text/plain", b"only GET and HEAD\n"), True
    view = table.get(path)
    if view is None:
        return (404, "text/plain", b"not found\n"), method == "GET"
    return view(), method == "GET"


class HttpServer:
    """The listening endpoint; `cleanup` stops it (bounded by SHUTDOWN_TIMEOUT_S)."""

    def __init__(self, agent: Agent) -> None:
        self.routes = routes(agent)
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port; OSError (e.g. the port is in use) if it cannot."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_HEAD)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                head = await within(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                (code, kind, body), send_body = (431, "text/plain", b"request head too large\n"), True
            else:
                (code, kind, body), send_body = respond(self.routes, head)
            reason = HTTPStatus(code).phrase
            writer.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + (body if send_body else b"")
            )
            await within(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or never finished its request: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await within(writer.wait_closed(), SHUTDOWN_TIMEOUT_S)

    async def cleanup(self) -> None:
        """Stop listening and end the open connections."""
        if self.server is not None:
            self.server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await within(self.server.wait_closed(), SHUTDOWN_TIMEOUT_S)
            self.server = None


async def start_server(agent: Agent, listen: str) -> HttpServer:
    """Serve the endpoints on `listen` (host:port, [v6]:port, :port for every address)."""
    host, _, port = listen.rpartition(":")
    server = HttpServer(agent)
    await server.start(host.strip("[]") or "0.0.0.0", int(port))
    return server
