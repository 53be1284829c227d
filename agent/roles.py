"""Roles, decisions, and the pure rules that choose between them. No I/O here: the runner feeds in what it
observed (lease state, clock readings, app health) and acts on the decision, so every rule is table-testable.

The client side of the lease, in the order the runner applies it (compare client-go's tryAcquireOrRenew):
1. Standby: read the row; `plan_standby` says acquire now, or when to look again (at the expiry, by the
   database's remaining time, or at the next poll).
2. Acquired: a `Holding` records the epoch, when the acquisition was sent and the fence deadline F.
3. Each renewal's outcome goes through `after_renewal`: renewed (F moves on, the IP is reconciled), lost
   (fence now), or failed (retry soon; F stays where it is).
4. Holding ends with a `HoldEvent`; `after_holding` maps it to the next role.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import assert_never

from lease.model import EventKind, LeaseState, NodeRecord

from .timing import MIN_RETRY_S, RHO, fence_deadline

RENEW_LEAD_S = 0.2  # time to reconcile the address once a renewal answered (two netlink calls, a loaded host)
# The conflict probe's own cost before it listens (the interface look-up, a worker thread's start): measured
# 0.02-0.06 s per round, quiet and with the 2 cores busy (bench/probe_cost.py), budgeted so that a round ahead of
# an acquisition has ended by then. A round delayed longer (once 0.28 s under load) is waited for by the claim.
PROBE_AHEAD_LEAD_S = 0.05


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
    then_stop: bool = False  # DEMOTING/FENCED: exit afterwards instead of returning to standby
    handover_to: str | None = None  # DEMOTING for a switchover: hand the lease to this node instead of releasing
    event: EventKind | None = None  # DEMOTING: the event to record instead of STEPPED_DOWN / DEMOTED
    resume: bool = False  # PROMOTING while already serving: (re)start the app in place, the IP stays
    leave_running: bool = False  # STOPPED during maintenance: the app and the IP stay, the lease is not released
    app_failed: bool = False  # DEMOTING for an application failure (warm: roles.warm_hold_off may shorten it)


@dataclass(frozen=True)
class Holding:
    """Everything that is true while this node holds the lease, in one value (None on a standby)."""

    epoch: int  # the fencing token of our acquisition
    last_sent: float  # local instant the last successful renewal (or the acquisition) was *sent*
    fence_at: float  # F: the IP must be gone by then unless a later renewal succeeds
    took_over: bool = False  # acquired an expired lease of another node (its address may linger up to G)

    @classmethod
    def acquired(cls, epoch: int, sent: float, ttl: float, margin: float, took_over: bool) -> Holding:
        return cls(epoch, sent, fence_deadline(sent, ttl, margin), took_over)


class StandbyAction(enum.Enum):
    ACQUIRE = "acquire"
    WAIT = "wait"


@dataclass(frozen=True)
class StandbyPlan:
    action: StandbyAction
    wake_at: float  # local clock instant of the next attempt when waiting
    reason: str
    # WAIT for another process's lease: the local instant by which it has surely expired (a poll may come first).
    # None when the wait is for anything else (a hold-off, the control state, a handover reserved for a node).
    expires_at: float | None = None


def plan_standby(
    state: LeaseState, me: str, instance: str | None, observed_at: float, poll: float, not_before: float
) -> StandbyPlan:
    """Decide, from a lease read answered at local time `observed_at`, whether to try now or when to look again.

    The remaining time was measured on the database clock no later than `observed_at`, so the lease has surely
    expired by observed_at + remaining * (1 + RHO): wake exactly then, not at the next poll. `poll` bounds the
    wait so that a release (which sets expires_at = now) is noticed within it. Only this very agent process
    (same node name and instance) may resume an unexpired lease: another process with our name — a clone, a
    second `fos run` — waits for the expiry like any other node. The control state (disabled, maintenance,
    automatic failover off, a handover reserved for another node) refuses as the acquire statement would
    (LeaseState.acquire_refusal): no attempt that cannot succeed, and a wait of `poll` before looking again.
    """
    if observed_at < not_before:
        return StandbyPlan(StandbyAction.WAIT, min(not_before, observed_at + poll), "holding off after a step-down")
    refusal = state.acquire_refusal(me, instance)
    if refusal is None:
        if state.reserved_for == me:
            why = "the lease was handed over to us"
        elif state.holder is not None and state.held:
            why = "the database still names this agent: resume"
        else:
            why = "the lease is free" if state.holder is None else f"{state.holder}'s lease expired"
        return StandbyPlan(StandbyAction.ACQUIRE, observed_at, why)
    remaining = max(0.0, (state.remaining_ms or 0) / 1000.0)
    expiry = observed_at + remaining * (1 + RHO)
    if not state.held and state.reserved_for is None:  # free or expired, yet refused: the control state
        return StandbyPlan(StandbyAction.WAIT, observed_at + poll, refusal)
    if state.reserved_for is not None:
        return StandbyPlan(StandbyAction.WAIT, min(expiry, observed_at + poll), refusal)
    if state.holder == me:
        refusal = f"another agent named {me} ({state.holder_instance or '?'}) holds epoch {state.epoch}"
    elif state.control.disabled or state.control.maintenance or state.control.failover_off:
        return StandbyPlan(StandbyAction.WAIT, observed_at + poll, refusal)
    else:
        refusal = f"{state.holder} holds epoch {state.epoch}"
    return StandbyPlan(StandbyAction.WAIT, min(expiry, observed_at + poll), refusal, expires_at=expiry)


def warm_gate(plan: StandbyPlan, warm: bool, app_healthy: bool, observed_at: float, poll: float) -> StandbyPlan:
    """Warm mode: a node competes for the lease only while its running application is healthy (taking it with a
    sick app would only make it step down again). A plan to acquire then becomes a wait of at most `poll` (the
    runner also wakes when the application becomes healthy). Cold mode, or a plan to wait: unchanged."""
    if not warm or app_healthy or plan.action is StandbyAction.WAIT:
        return plan
    return StandbyPlan(
        StandbyAction.WAIT, observed_at + poll, f"{plan.reason}, but the application here is not healthy"
    )


def warm_hold_off(
    not_before: float,
    app_failed_at: float | None,
    free: bool,
    warm: bool,
    app_healthy: bool,
    heartbeat: float,
    min_hold: float,
) -> float:
    """Until when this node holds off from the lease. Warm mode, after a step-down for an application failure
    (`app_failed_at`: when that let-go ended): the hold-off leaves the free lease to a healthy standby; one that none
    took within a heartbeat (a release's hint wakes the standbys at once, their poll comes within half a heartbeat)
    has no healthy standby to go to, so once this node's own application is healthy again (its supervisor restarted
    it) it may take the lease back, after lease.min_hold at least, rather than leave the cluster unserved for the
    whole hold-off. Any other let-go (a fence, an IP or promotion failure), cold mode, a held lease, an application
    not healthy: `not_before`."""
    if app_failed_at is None or not warm or not free or not app_healthy:
        return not_before
    return min(not_before, app_failed_at + max(heartbeat, min_hold))


def plan_retry(state: LeaseState, me: str, instance: str | None, now: float, poll: float, not_before: float) -> float:
    """When to try again after an acquisition that did not succeed (a lost race, a row not as read): at the
    plan for what the store saw then, but never at once (a loop without a wait would spin a core)."""
    plan = plan_standby(state, me, instance, now, poll, not_before)
    return max(plan.wake_at, now + MIN_RETRY_S)


def probe_ahead_at(plan: StandbyPlan, now: float, probe_timeout: float, probing: bool) -> float | None:
    """When to start the conflict probe ahead of an acquisition (CommonIp.probe_ahead), or None for no probe now.

    Only while waiting for another process's lease to expire (plan.expires_at), and only when the promotion
    would probe (`probing`: the netlink driver with cluster.probe_conflict on): one round (`probe_timeout` plus
    PROBE_AHEAD_LEAD_S of its own overhead) placed to end at the expiry, so that its verdict is as fresh at the
    acquisition as a probe right after it. The holder's address is gone by its fence deadline, before the
    database can call the lease expired, so a round that hears nobody then says what a later round would. A round
    that can no longer end by the expiry is started at once if it can still listen `probe_timeout` before it (the
    read that planned it came late); else None, and the promotion probes as it always did. Never a round whose
    start lies beyond the plan's wake-up: the next read plans again (and a renewal may have moved the expiry)."""
    if not probing or plan.action is not StandbyAction.WAIT or plan.expires_at is None:
        return None
    start = plan.expires_at - probe_timeout - PROBE_AHEAD_LEAD_S
    if start > plan.wake_at:
        return None
    if start >= now:
        return start
    return now if now + probe_timeout <= plan.expires_at else None


class RenewOutcome(enum.Enum):
    RENEWED = "renewed"  # the database extended our lease
    LOST = "lost"  # the compare-and-set found another epoch or holder, or an expired lease
    FAILED = "failed"  # no answer in time, or an error: we do not know


@dataclass(frozen=True)
class RenewStep:
    holding: Holding
    next_renew_at: float
    failing: bool
    lost: bool


def after_renewal(
    holding: Holding, sent: float, outcome: RenewOutcome, now: float, ttl: float, margin: float, heartbeat: float
) -> RenewStep:
    """Apply one renewal's outcome. Only a success moves the fence deadline, and only forward: a renewal sent
    at `sent` proves the lease lasts until sent + T on the database clock, never longer."""
    match outcome:
        case RenewOutcome.RENEWED:
            fence_at = max(holding.fence_at, fence_deadline(sent, ttl, margin))
            renewed = Holding(holding.epoch, max(holding.last_sent, sent), fence_at, holding.took_over)
            return RenewStep(renewed, sent + heartbeat, failing=False, lost=False)
        case RenewOutcome.LOST:
            return RenewStep(holding, now, failing=False, lost=True)
        case RenewOutcome.FAILED:
            return RenewStep(holding, now + min(heartbeat / 4, 0.5), failing=True, lost=False)
        case _:
            assert_never(outcome)


def renewal_due(
    planned: float, last_attempt: float, ip_expires_at: float | None, heartbeat: float, call_timeout: float
) -> float:
    """When to send the next renewal: at the planned time (a heartbeat after the last success, or the retry after
    a failure), or sooner, so that its answer (at most `call_timeout` after sending) can extend the common IP's
    kernel lifetime before the kernel removes it. With a short ttl the lifetime is a single second, and a renewal
    answered a little later than the previous one would otherwise leave a healthy holder without its address for
    a moment. Never sooner than min(heartbeat/4, 0.5 s) after the last attempt, success or not: a database that
    fails at once must not be hammered."""
    due = planned
    if ip_expires_at is not None:
        due = min(due, ip_expires_at - call_timeout - RENEW_LEAD_S)
    return max(due, last_attempt + min(heartbeat / 4, 0.5))


class HoldEvent(enum.Enum):
    """What ended a period of holding the lease."""

    WORK_DONE = "work_done"
    FENCE_DEADLINE = "fence_deadline"
    LEASE_LOST = "lease_lost"
    SUSPENDED = "suspended"
    IP_FAILED = "ip_failed"  # the common IP could not be managed (bound or extended) several times in a row
    STOP_REQUESTED = "stop_requested"
    APP_FAILED = "app_failed"
    WORK_FAILED = "work_failed"
    SWITCHOVER = "switchover"  # a due switchover to another node (detail: the target)
    DISABLED = "disabled"  # the cluster was disabled (detail: by whom)
    MAINTENANCE_OVER = "maintenance_over"  # maintenance ended while the app had failed or was not running


def let_go_event(decision: Decision) -> EventKind | None:
    """The event a DEMOTING decision records once the node let go (a handover records its own, HANDOVER)."""
    if decision.handover_to is not None:
        return None
    if decision.event is not None:
        return decision.event
    return EventKind.DEMOTED if decision.then_stop else EventKind.STEPPED_DOWN


@dataclass(frozen=True)
class Modes:
    """The control state in force while holding, as far as it changes what an event means."""

    maintenance: bool = False  # no step-down for the app, no app start or stop; a stop leaves everything running
    failover_off: bool = False  # anti-flap tripped: nobody else may acquire, so restart the app here instead


def after_holding(event: HoldEvent, detail: str, hold_off: float, min_hold: float, modes: Modes = Modes()) -> Decision:
    """The next role once holding the lease (while PROMOTING or ACTIVE) ended for `event`."""
    match event:
        case HoldEvent.WORK_DONE:
            return Decision(Role.ACTIVE, detail or "promotion complete: the IP is bound and the app is healthy")
        case HoldEvent.FENCE_DEADLINE:
            return Decision(Role.FENCED, f"no successful renewal before the fence deadline ({detail})", min_hold)
        case HoldEvent.LEASE_LOST:
            return Decision(Role.FENCED, f"the lease was lost ({detail})", min_hold)
        case HoldEvent.SUSPENDED:
            return Decision(Role.FENCED, f"the machine was suspended ({detail}): fencing at once", min_hold)
        case HoldEvent.STOP_REQUESTED if modes.maintenance:
            why = f"stop requested during maintenance ({detail}): the application and the IP stay, the lease is kept"
            return Decision(Role.STOPPED, why, leave_running=True)
        case HoldEvent.STOP_REQUESTED:
            return Decision(Role.DEMOTING, f"stop requested ({detail})", 0.0, then_stop=True)
        case HoldEvent.APP_FAILED if modes.failover_off:
            why = f"the application failed ({detail}) while automatic failover is off: restarting it here"
            return Decision(Role.PROMOTING, why, resume=True)
        case HoldEvent.APP_FAILED:
            why = f"the application failed ({detail}): stepping down"
            return Decision(Role.DEMOTING, why, max(hold_off, min_hold), app_failed=True)
        case HoldEvent.IP_FAILED | HoldEvent.WORK_FAILED if modes.maintenance:
            # fos starts and stops no application during maintenance, and nobody else may take over: keep holding
            # (the renewals, the IP's reconciliation and the health checks go on); looked at again when it ends.
            what = "the common IP cannot be managed" if event is HoldEvent.IP_FAILED else "promotion failed"
            return Decision(Role.ACTIVE, f"{what} during maintenance ({detail}): holding on, the application as it is")
        case HoldEvent.IP_FAILED:
            return Decision(
                Role.DEMOTING, f"the common IP cannot be managed ({detail}): stepping down", max(hold_off, min_hold)
            )
        case HoldEvent.WORK_FAILED:
            return Decision(Role.DEMOTING, f"promotion failed ({detail}): stepping down", max(hold_off, min_hold))
        case HoldEvent.SWITCHOVER:
            return Decision(Role.DEMOTING, f"switchover to {detail}: handing the lease over", handover_to=detail)
        case HoldEvent.DISABLED:
            return Decision(Role.DEMOTING, f"{detail}: letting go", event=EventKind.DEMOTED)
        case HoldEvent.MAINTENANCE_OVER:
            return Decision(Role.PROMOTING, f"maintenance over ({detail}): starting the application", resume=True)
        case _:
            assert_never(event)


def live_namesake(
    nodes: list[NodeRecord], me: str, instance: str | None, heartbeat: float, call_timeout: float
) -> NodeRecord | None:
    """Another live agent process using our node name (a cloned VM, a second `fos run --node`), if its row says
    so: another instance id, not stopped, and seen within three heartbeats (it writes its row at least every
    timing.NODE_ROW_HEARTBEATS)."""
    recent = 3 * heartbeat + call_timeout
    for n in nodes:
        if n.node != me or n.instance == instance or n.role == Role.STOPPED.value:
            continue
        if n.last_seen_age_s is not None and n.last_seen_age_s <= recent:
            return n
    return None
