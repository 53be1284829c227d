"""Roles, decisions, and the pure rules that choose between them. No I/O here: the runner feeds in what it
observed (lease state, clock readings, app health) and acts on the decision, so every rule is table-testable."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lease import LeaseState

from .timing import RHO


class Role(enum.StrEnum):
    STANDBY = "standby"  # not holding; watching the lease and waiting for its expiry
    PROMOTING = "promoting"  # holding the lease; probing, binding the IP, starting the app
    ACTIVE = "active"  # holding the lease, serving the IP and a healthy app
    DEMOTING = "demoting"  # giving up on purpose: drop the IP, stop the app, release the lease
    FENCED = "fenced"  # lost the lease (or could not renew in time): drop the IP first, then stop the app
    STOPPED = "stopped"  # the agent is exiting


@dataclass(frozen=True)
class Decision:
    """What the current role's handler decided. `reason` is logged once, with the transition."""

    role: Role
    reason: str
    hold_off: float = 0.0  # seconds before competing for the lease again (after a step-down)
    then_stop: bool = False  # DEMOTING: exit afterwards instead of returning to standby


class StandbyAction(enum.Enum):
    ACQUIRE = "acquire"
    WAIT = "wait"


@dataclass(frozen=True)
class StandbyPlan:
    action: StandbyAction
    wake_at: float  # local clock instant of the next attempt when waiting
    reason: str


def plan_standby(state: LeaseState, me: str, observed_at: float, poll: float, not_before: float) -> StandbyPlan:
    """Decide, from a lease read answered at local time `observed_at`, whether to try now or when to look again.

    The remaining time was measured on the database clock no later than `observed_at`, so the lease has surely
    expired by observed_at + remaining * (1 + RHO): wake exactly then, not at the next poll. `poll` bounds the
    wait so that a release (which sets expires_at = now) is noticed within it.
    """
    if observed_at < not_before:
        return StandbyPlan(StandbyAction.WAIT, min(not_before, observed_at + poll), "holding off after a step-down")
    if not state.held:
        why = "the lease is free" if state.holder is None else f"{state.holder}'s lease expired"
        return StandbyPlan(StandbyAction.ACQUIRE, observed_at, why)
    if state.holder == me:
        return StandbyPlan(StandbyAction.ACQUIRE, observed_at, "the database still names this node: resume")
    remaining = max(0.0, (state.remaining_ms or 0) / 1000.0)
    expiry = observed_at + remaining * (1 + RHO)
    return StandbyPlan(StandbyAction.WAIT, min(expiry, observed_at + poll), f"{state.holder} holds epoch {state.epoch}")


class HoldEvent(enum.Enum):
    """What ended a period of holding the lease."""

    WORK_DONE = "work_done"
    FENCE_DEADLINE = "fence_deadline"
    LEASE_LOST = "lease_lost"
    STOP_REQUESTED = "stop_requested"
    APP_FAILED = "app_failed"
    WORK_FAILED = "work_failed"


def after_holding(event: HoldEvent, detail: str, hold_off: float, min_hold: float) -> Decision:
    """The next role once holding the lease (while PROMOTING or ACTIVE) ended for `event`."""
    if event is HoldEvent.WORK_DONE:
        return Decision(Role.ACTIVE, detail or "promotion complete: the IP is bound and the app is healthy")
    if event is HoldEvent.FENCE_DEADLINE:
        return Decision(Role.FENCED, f"no successful renewal before the fence deadline ({detail})", min_hold)
    if event is HoldEvent.LEASE_LOST:
        return Decision(Role.FENCED, f"the lease was lost ({detail})", min_hold)
    if event is HoldEvent.STOP_REQUESTED:
        return Decision(Role.DEMOTING, f"stop requested ({detail})", 0.0, then_stop=True)
    if event is HoldEvent.APP_FAILED:
        return Decision(Role.DEMOTING, f"the application failed ({detail}): stepping down", max(hold_off, min_hold))
    return Decision(Role.DEMOTING, f"promotion failed ({detail}): stepping down", max(hold_off, min_hold))
