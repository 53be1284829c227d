"""`GET /`: a small read-only status page for people, and `http.token`, which guards /, /status and /metrics.

The page is rendered on the server from one snapshot of the database (the lease row, the node rows, the recent
events; read on a store of its own, at most once a second however many browsers look), plus this agent's own
view. No script, no external asset; it reloads itself every two seconds. Every value is HTML-escaped.

With `http.token`, those three paths need `Authorization: Bearer TOKEN`; the page also takes `?token=TOKEN` once,
answers with an HttpOnly, SameSite=Strict cookie and a redirect to the bare URL, and accepts the cookie from then
on. /health, /active and /standby stay open for load balancers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lease import Event, LeaseState, NodeRecord, StoreError

if TYPE_CHECKING:
    from .runner import Agent

PROTECTED = frozenset({"/", "/status", "/metrics"})
COOKIE = "fos_token"
REFRESH_S = 2
SNAPSHOT_MAX_AGE_S = 1.0
DOWN_AFTER_HEARTBEATS = 3  # as `fos status`: an older node row is shown as down
ACQUIRE_KINDS = ("takeover", "acquired", "resumed")
NONE = "-"  # an unknown value


# ---- the token -------------------------------------------------------------------------------------------------


def token_guard(token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: without a token configured it passes everything through."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        if token is None or request.path not in PROTECTED:
            return await handler(request)
        given = request.query.get("token")
        if request.path == "/" and given is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            raise response
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        cookie = request.cookies.get(COOKIE, "")
        if any(v and hmac.compare_digest(v.encode(), token.encode()) for v in (bearer, cookie)):
            return await handler(request)
        return web.Response(
            status=401,
            text="401: this page needs the token (Authorization: Bearer, or ?token= once)\n",
            headers={"WWW-Authenticate": 'Bearer realm="fos"'},
        )

    return guard


# ---- the snapshot ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    lease: LeaseState | None
    nodes: list[NodeRecord]
    events: list[Event]
    error: str | None
    taken: float = field(default_factory=time.monotonic)


class PageSource:
    """The database's view for the page, read on `store` (its own, or the agent's in-memory one in tests)."""

    def __init__(self, cluster: str, store: Any, timeout: float, close_store: bool) -> None:
        self.cluster, self.store, self.timeout, self.close_store = cluster, store, timeout, close_store
        self._snap: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            if self._snap is not None and time.monotonic() - self._snap.taken < SNAPSHOT_MAX_AGE_S:
                return self._snap
            try:
                async with asyncio.timeout(self.timeout + 0.5):
                    lease = await self.store.read(self.cluster, timeout=self.timeout)
                    nodes = await self.store.list_nodes(self.cluster, timeout=self.timeout)
                    events = await self.store.list_events(self.cluster, limit=60, timeout=self.timeout)
                self._snap = Snapshot(lease, nodes, events, None)
            except (StoreError, TimeoutError) as exc:
                self._snap = Snapshot(None, [], [], f"the database did not answer: {exc}"[:200])
            return self._snap

    async def close(self) -> None:
        if self.close_store:
            with contextlib.suppress(Exception):
                await self.store.close()


# ---- the take-over timeline (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Takeover:
    """One acquisition of the lease and its phases, in seconds (None: not known)."""

    at: datetime
    node: str | None
    epoch: int | None
    trigger: str
    before_s: float | None  # previous holder expired or released -> acquired
    ip_s: float | None  # acquired -> IP bound (the ip_bound event, where recorded)
    serving_s: float | None  # acquired -> app healthy (PROMOTED)


def takeovers(events: list[Event], limit: int = 8) -> list[Takeover]:
    """The recent acquisitions, newest first, from events in any order."""
    ordered = sorted(events, key=lambda e: e.id)
    out: list[Takeover] = []
    for i, ev in enumerate(ordered):
        if ev.kind not in ACQUIRE_KINDS:
            continue
        later = [e for e in ordered[i + 1 :] if e.epoch == ev.epoch]
        promoted = next((e for e in later if e.kind == "promoted"), None)
        bound = next((e for e in later if e.kind == "ip_bound"), None)
        before: float | None = None
        if ev.kind == "takeover":
            trigger = "fault: the holder's lease expired"
            try:
                before = int((ev.detail or "").split(" expired ")[1].split(" ms")[0]) / 1000.0
            except (IndexError, ValueError):
                before = None
        elif ev.kind == "resumed":
            trigger = "the same node restarted"
        else:
            gave = next((e for e in reversed(ordered[:i]) if e.kind in ("released", "handover")), None)
            trigger = "switchover" if gave is not None and gave.kind == "handover" else "the lease was free"
            if gave is not None and gave.kind == "released":
                trigger = f"released by {gave.node}"
            if gave is not None:
                before = (ev.at - gave.at).total_seconds()
        out.append(
            Takeover(
                ev.at,
                ev.node,
                ev.epoch,
                trigger,
                before,
                None if bound is None else (bound.at - ev.at).total_seconds(),
                None if promoted is None else (promoted.at - ev.at).total_seconds(),
            )
        )
    return list(reversed(out))[:limit]


# ---- rendering (pure) -------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _s(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f} s"


def control_rows(lease: LeaseState | None) -> list[tuple[str, str]]:
    """Maintenance, disabled, anti-flap and a pending switchover, from the control state on the lease row."""
    if lease is None:
        return []
    control = lease.control
    rows: list[tuple[str, str]] = []
    if control.maintenance_ms is None:
        rows.append(("maintenance", "off"))
    else:
        rows.append(("maintenance", f"ON for {control.maintenance_ms / 1000:.0f} s by {control.maintenance_by or '?'}"))
    if control.disabled_ms is None:
        rows.append(("failover", "enabled"))
    else:
        rows.append(("failover", f"DISABLED for {control.disabled_ms / 1000:.0f} s by {control.disabled_by or '?'}"))
    if control.failover_off_ms is not None:
        rows.append(("anti-flap", f"automatic failover OFF: {control.failover_off_reason or ''}"))
    switchover = control.switchover
    if switchover is not None:
        when = "due now" if switchover.due else f"in {switchover.due_in_ms / 1000:.0f} s"
        rows.append(("switchover", f"to {switchover.to or 'best node'} {when}"))
    else:
        rows.append(("switchover", "none pending"))
    return rows


def render(cluster: str, me: str, view: dict[str, Any], snap: Snapshot, heartbeat: float) -> str:
    """The whole page. `view` is this agent's /status document."""
    lease = snap.lease
    holder = lease.holder if lease is not None and lease.held else None
    left = None if lease is None or lease.remaining_ms is None else max(0.0, lease.remaining_ms / 1000)
    lease_rows = [
        ("lease holder", f"<b id='holder'>{_e(holder or 'nobody')}</b>"),
        ("epoch", f"<span id='epoch'>{_e(lease.epoch if lease else view.get('lease_epoch'))}</span>"),
        ("seconds left", _e(NONE if left is None or holder is None else f"{left:.1f}")),
    ]
    if lease is not None and lease.handover_to:
        lease_rows.append(("handed over to", _e(lease.handover_to)))
    lease_rows += [(k, _e(v)) for k, v in control_rows(lease)]
    node_rows = []
    for n in snap.nodes:
        age = n.last_seen_age_s
        down = n.role == "stopped" or age is None or age > DOWN_AFTER_HEARTBEATS * heartbeat
        role = "down" if down else n.role
        health = NONE if down or n.app_healthy is None else ("healthy" if n.app_healthy else "UNHEALTHY")
        node_rows.append(
            f"<tr class='{_e(role)}'><td>{_e(n.node)}{' (this page)' if n.node == me else ''}</td>"
            f"<td class='role'>{_e(role)}</td><td>{_e(health)}</td>"
            f"<td>{_e(NONE if age is None else f'{age:.1f} s ago')}</td><td>{_e(n.agent_version)}</td></tr>"
        )
    timeline = [
        f"<tr><td>{_e(t.at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{_e(t.node)}</td>"
        f"<td>{_e(t.epoch)}</td><td>{_e(t.trigger)}</td><td>{_s(t.before_s)}</td><td>{_s(t.ip_s)}</td>"
        f"<td>{_s(t.serving_s)}</td></tr>"
        for t in takeovers(snap.events)
    ]
    problem = f"<p class='problem'>{_e(snap.error)}; showing this agent's own view.</p>" if snap.error else ""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"fos {_e(cluster)}: {_e(holder or 'nobody')} holds"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>
body{{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.4em;margin:0 0 .2em}} h2{{font-size:1.1em;margin:1.4em 0 .4em}}
table{{border-collapse:collapse;background:#fff}} td,th{{border:1px solid #ddd;padding:.3em .7em;text-align:left}}
th{{background:#f0f0f0}} .active .role{{color:#080;font-weight:bold}} .down .role{{color:#b00;font-weight:bold}}
.problem{{background:#fee;border:1px solid #d99;padding:.5em}} .muted{{color:#777}}
</style></head><body>
<h1>fos cluster <span id="cluster">{_e(cluster)}</span></h1>
<p class="muted">seen from node {_e(me)} ({_e(view.get("role"))}) at {_e(now)}; reloads every {REFRESH_S} s</p>
{problem}
<h2>Lease</h2><table>{"".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in lease_rows)}</table>
<h2>Nodes</h2><table id="nodes"><tr><th>node</th><th>role</th><th>application</th><th>last seen</th>
<th>version</th></tr>{"".join(node_rows)}</table>
<h2>Recent take-overs</h2><table id="timeline"><tr><th>acquired (UTC)</th><th>node</th><th>epoch</th><th>trigger</th>
<th>expired/released → acquired</th><th>acquired → IP bound</th><th>acquired → serving</th></tr>
{"".join(timeline) or '<tr><td colspan="7" class="muted">none in the recent events</td></tr>'}</table>
</body></html>
"""


# ---- wiring ---------------------------------------------------------------------------------------------------


def add_page(app: web.Application, agent: Agent, view: Callable[[Agent], dict[str, Any]]) -> None:
    """Route GET / on `app`; the page reads on a store of its own (closed with the app)."""
    from lease.memory import MemoryLeaseStore

    from .stores import open_store

    if isinstance(agent.store, MemoryLeaseStore):
        source = PageSource(agent.cfg.cluster, agent.store, agent.cfg.call_timeout, close_store=False)
    else:
        source = PageSource(agent.cfg.cluster, open_store(agent.cfg), max(agent.cfg.call_timeout, 1.0), True)

    async def page(_: web.Request) -> web.Response:
        snap = await source.snapshot()
        html = render(agent.cfg.cluster, agent.node.name, view(agent), snap, agent.cfg.lease.heartbeat)
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def close(_: web.Application) -> None:
        await source.close()

    app.router.add_get("/", page)
    app.on_cleanup.append(close)
