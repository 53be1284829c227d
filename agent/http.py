"""The agent's read-only HTTP endpoint for monitoring and load balancers (aiohttp).

GET /         the status page for people (agent/page.py); with http.token, / /status and /metrics need it
GET /health   200 while the loop is alive and consistent; 503 if it stalled, or if we hold the lease but
              renewals are failing
GET /active   200 only on the node that holds the lease, has the common IP bound and a healthy app
GET /standby  200 on a node that is a ready standby (in warm mode: with its application healthy)
GET /status   JSON of the agent's view
GET /metrics  Prometheus text
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .page import add_page, token_guard
from .roles import Role
from .runner import Agent


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
        "app_mode": agent.cfg.app.mode,
        "app_healthy": agent.health.healthy,
        "app_detail": agent.health.last_detail,
        "loop_age_s": round(now - agent.last_tick, 3),
        **lease_seen(agent),
        "control": control_seen(agent),
        "replication": replication_seen(agent),
    }


def replication_seen(agent: Agent) -> dict[str, object] | None:
    """How old this node's installation copy was when it last took over (fos mirror), if replication is on."""
    schedule = agent.replication
    if schedule is None or schedule.last_freshness is None:
        return None
    return schedule.last_freshness.as_dict()


def control_seen(agent: Agent) -> dict[str, Any]:
    """The control state as this agent last read it (pending switchover, maintenance, disabled, flapping)."""
    c = agent.ops.control
    sw = c.switchover
    return {
        "maintenance": c.maintenance,
        "maintenance_by": c.maintenance_by,
        "disabled": c.disabled,
        "disabled_by": c.disabled_by,
        "failover_off": c.failover_off,
        "failover_off_reason": c.failover_off_reason,
        "switchover": None if sw is None else {"to": sw.to, "due_in_s": sw.due_in_ms / 1000, "by": sw.by},
    }


def lease_seen(agent: Agent) -> dict[str, Any]:
    """Who holds the lease, as this agent last saw it: itself while holding, else its last read."""
    if agent.holding is not None:
        return {"lease_holder": agent.node.name, "lease_epoch": agent.holding.epoch}
    view = agent.lease_view
    if view is None:
        return {"lease_holder": None, "lease_epoch": None}
    return {"lease_holder": view.holder if view.held else None, "lease_epoch": view.epoch}


STALL_HEARTBEATS = 2.0  # this long without a pass of the agent's loop: /health and /active call it stalled


def loop_stalled(agent: Agent) -> bool:
    # The loop passes at least once a heartbeat in every role (a holder at each renewal: with a hint listener up it
    # reads nothing in between, an idle holder's CPU; a standby every heartbeat / 2): two heartbeats without a pass
    # leave a heartbeat of slack for a late loop before it is called stuck.
    return agent.clock.now() - agent.last_tick > max(STALL_HEARTBEATS * agent.cfg.lease.heartbeat, 1.0)


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


def make_app(agent: Agent) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        doc = status(agent)
        if loop_stalled(agent):
            return web.json_response({**doc, "problem": "the agent loop stalled"}, status=503)
        if agent.role in (Role.ACTIVE, Role.PROMOTING) and agent.renew_failing:
            return web.json_response({**doc, "problem": "holding the lease but cannot renew it"}, status=503)
        return web.json_response(doc)

    async def active(_: web.Request) -> web.Response:
        ok = is_active(agent) and not loop_stalled(agent)
        return web.json_response(status(agent), status=200 if ok else 503)

    async def standby(_: web.Request) -> web.Response:
        ok = agent.role is Role.STANDBY and agent.app_ready() and not loop_stalled(agent)  # warm: app healthy
        return web.json_response(status(agent), status=200 if ok else 503)

    async def status_view(_: web.Request) -> web.Response:
        return web.json_response(status(agent))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=agent.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[token_guard(agent.cfg.http_token)])  # http.token: /, /status, /metrics
    add_page(app, agent, status)  # GET /: the status page (agent/page.py)
    app.router.add_get("/health", health)
    app.router.add_get("/active", active)
    app.router.add_get("/standby", standby)
    app.router.add_get("/status", status_view)
    app.router.add_get("/metrics", metrics)
    return app


async def start_server(agent: Agent, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    # Never let a lingering client connection hold up a graceful stop.
    runner = web.AppRunner(make_app(agent), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port)).start()
    return runner
