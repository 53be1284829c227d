"""One renewal of the lease, run as a task beside whatever the holder does, and how its outcome is folded into
the Holding (agent/roles.after_renewal decides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lease import InvalidName, ProtocolViolation, SchemaMissing, StoreConfigError, StoreError

from .roles import RenewOutcome, after_renewal

if TYPE_CHECKING:
    from .runner import Agent

# A database that misreports row counts (SET NOCOUNT ON, a trigger) cannot judge any compare-and-set, and a name
# the store refuses will be refused again: no retry cures either, and going on could let two nodes hold. Stop the
# agent (exit 2 with the reason). A missing schema or driver at run time (a restore, a package upgrade) is only an
# outage: the holder fences at its deadline as for any outage, and the standby keeps trying (logged at error
# level); start-up refuses those with exit 2.
FATAL_STORE_ERRORS = (ProtocolViolation, InvalidName)
MISCONFIGURED = (StoreConfigError, SchemaMissing)


@dataclass(frozen=True)
class Renewal:
    sent: float
    outcome: RenewOutcome
    error: str = ""


async def renew_lease(agent: Agent, epoch: int) -> Renewal:
    sent = agent.clock.now()
    try:
        with agent.metrics.renew_latency.time():
            ok = await agent.store.renew(
                agent.cfg.cluster, agent.node.name, epoch, agent.ttl_ms, timeout=agent.call_timeout
            )
        return Renewal(sent, RenewOutcome.RENEWED if ok else RenewOutcome.LOST)
    except FATAL_STORE_ERRORS:
        raise
    except StoreError as exc:
        return Renewal(sent, RenewOutcome.FAILED, str(exc))


def apply_renewal(agent: Agent, renewal: Renewal) -> tuple[float, bool]:
    """Fold one renewal into the Holding; return (next renewal time, lease lost)."""
    assert agent.holding is not None
    lease = agent.cfg.lease
    step = after_renewal(
        agent.holding,
        renewal.sent,
        renewal.outcome,
        agent.clock.now(),
        lease.ttl,
        lease.fence_margin,
        lease.heartbeat,
    )
    agent.holding = step.holding
    if step.failing:
        agent.metrics.renew_failures.inc()
        if not agent.renew_failing:
            agent.log.warning("renew_failed", error=renewal.error)
    elif agent.renew_failing and not step.lost:
        agent.log.info("renew_recovered")
    agent.renew_failing = step.failing
    return step.next_renew_at, step.lost
