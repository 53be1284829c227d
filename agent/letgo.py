"""Letting go of the lease on purpose (a step-down, a stop, a switchover, a disabled cluster), after a fence, or
after an internal error: the common IP first (from then on no user traffic reaches this node), then the
application, then the lease, released or handed over only once the IP is confirmed gone."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from lease import EventKind, StoreError

from .renewal import renew_lease
from .roles import Decision, Holding, RenewOutcome
from .wake import HintKind

if TYPE_CHECKING:
    from .runner import Agent

CLEANUP_TIMEOUT_S = 5.0  # each step of the emergency clean-up after an internal error


async def let_go(agent: Agent, kind: EventKind | None, decision: Decision) -> bool:
    """IP first (from then on no user traffic reaches this node), then the app (not in warm mode: there the
    app keeps running on every node until the agent stops), then the lease: released,
    or handed over to a switchover's target (only once the IP is confirmed gone, like a release). For a
    switchover the lease is renewed while the app stops (the IP is confirmed gone, so holding it serves nobody and
    harms nobody): a stop longer than the ttl stays a handover, never an expiry the target takes as a fault.
    Returns True if the lease was handed over."""
    ip_gone = await agent.ip.drop()
    if agent.warm is None:  # warm mode: only the IP moves; the app keeps running under its supervisor
        await _stop_app(agent, decision, ip_gone)
    holding, agent.holding = agent.holding, None
    handed = False
    if holding is not None:
        handed = await _give_up(agent, holding, decision, ip_gone)
        if kind is not None:
            await agent.event(kind, decision.reason, holding.epoch)
    agent.renew_failing = False
    agent.metrics.epoch.set(0)
    agent.metrics.lease_seconds_left.set(0)
    now = agent.clock.now()
    agent.app_failed_at = now if decision.app_failed else None
    agent.not_before = now + decision.hold_off
    return handed


async def _stop_app(agent: Agent, decision: Decision, ip_gone: bool) -> None:
    """Stop the application; for a switchover the lease is renewed meanwhile (see let_go)."""
    holding = agent.holding
    renewing = None
    if decision.handover_to is not None and ip_gone and holding is not None:
        renewing = asyncio.create_task(_keep_renewing(agent, holding.epoch))
    try:
        await agent.app.stop()
    finally:
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
    agent.metrics.app_healthy.set(0)
    agent.health.forget("the application is stopped on this node")


async def _keep_renewing(agent: Agent, epoch: int) -> None:
    """Renew now and then every heartbeat until cancelled or the lease is lost (a failed renewal is simply tried
    again): the IP's drop may have taken a while since the holder's last renewal."""
    while True:
        renewal = await renew_lease(agent, epoch)
        if renewal.outcome is RenewOutcome.LOST:
            return
        await agent.clock.sleep(agent.cfg.lease.heartbeat)


async def _give_up(agent: Agent, holding: Holding, decision: Decision, ip_gone: bool) -> bool:
    """Hand the lease over (a switchover), release it, or keep it for this node: during maintenance or with
    automatic failover off only the holder's node may acquire, so a release (or a handover, which the acquire
    statement refuses its target then) would leave the cluster to nobody; kept, the lease expires and this
    node resumes. The control state is read again before a handover: the let-go (the app's stop) may have
    taken seconds since the switchover was seen."""
    control = agent.ops.control
    if decision.handover_to is not None and ip_gone:
        control = await agent.ops.read_control()
        if not (control.maintenance or control.failover_off or control.disabled):
            if await agent.ops.hand_over(holding, decision.handover_to, decision.reason):
                _wake_peers(agent, HintKind.HANDOVER)
                return True
            # Refused (the request was cancelled or replaced meanwhile, a gate came on) or unanswered: the lease
            # is still ours (renewed until now), so keep it and resume at once from this instance (the standby's
            # plan does), unless the cluster is disabled meanwhile. Not resumed, it expires as after a failure.
            control = await agent.ops.read_control()
            if not control.disabled:
                agent.log.warning("handover_refused_resuming", to=decision.handover_to, epoch=holding.epoch)
                return False
        agent.log.warning("handover_abandoned", to=decision.handover_to, control=control.sees())
    if (control.maintenance or control.failover_off) and not control.disabled:
        agent.log.warning("lease_kept_for_this_node", epoch=holding.epoch, control=control.sees())
        return False
    await release(agent, holding, decision.reason, ip_gone)
    return False


async def release(agent: Agent, holding: Holding, detail: str, ip_gone: bool) -> None:
    """Release the lease, but only once the IP is confirmed gone: a release lets the next node in at once,
    while the address we could not remove is still here. Kept instead, the lease expires by itself after
    the kernel removed the address (its lifetime ends before F, and F before the expiry)."""
    if not ip_gone:
        agent.log.error("lease_kept_until_expiry", epoch=holding.epoch, reason="the common IP could not be removed")
        return
    try:
        released = await agent.store.release(
            agent.cfg.cluster, agent.node.name, holding.epoch, detail=detail[:200], timeout=agent.call_timeout
        )
        agent.log.info("lease_released" if released else "lease_already_gone", epoch=holding.epoch)
        if released:
            _wake_peers(agent, HintKind.RELEASED)
    except StoreError as exc:
        agent.log.warning("lease_release_failed", epoch=holding.epoch, error=str(exc))


def _wake_peers(agent: Agent, kind: HintKind) -> None:
    """Tell the others at once that the lease is free or theirs (a hint: each reads the database and judges by
    it; Waker.hint never waits and never raises)."""
    if agent.waker is not None:
        agent.waker.hint(kind)


async def emergency_let_go(agent: Agent, detail: str) -> None:
    """After an internal error: IP, app and lease, each bounded; the lease only once the IP is gone."""
    ip_gone = False
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT_S):
            ip_gone = await agent.ip.drop()
    except Exception as exc:
        agent.log.error("cleanup_failed", step="ip", error=f"{type(exc).__name__}: {exc}")
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT_S):  # warm: its supervisor first, or it would restart it
            await (agent.warm.close() if agent.warm is not None else agent.app.stop())
    except Exception as exc:
        agent.log.error("cleanup_failed", step="app", error=f"{type(exc).__name__}: {exc}")
    holding, agent.holding = agent.holding, None
    if holding is not None:
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await release(agent, holding, detail, ip_gone)
        except Exception as exc:
            agent.log.error("cleanup_failed", step="lease", error=f"{type(exc).__name__}: {exc}")
