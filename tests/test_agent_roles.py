"""The pure decision rules, table-driven with an injected clock reading."""

from __future__ import annotations

import pytest

from agent.roles import (
    PROBE_AHEAD_LEAD_S,
    RENEW_LEAD_S,
    Decision,
    HoldEvent,
    Holding,
    RenewOutcome,
    Role,
    StandbyAction,
    StandbyPlan,
    after_holding,
    after_renewal,
    live_namesake,
    plan_retry,
    plan_standby,
    probe_ahead_at,
    renewal_due,
    warm_gate,
    warm_hold_off,
)
from agent.timing import MIN_RETRY_S, RHO, fence_deadline
from lease import LeaseState, NodeRecord
from lease.model import Control

NOW = 1000.0


@pytest.mark.parametrize(
    ("state", "not_before", "action", "wake_at", "reason"),
    [
        (LeaseState("c", None, 0, None), 0, StandbyAction.ACQUIRE, NOW, "free"),
        (LeaseState("c", None, 4, -50), 0, StandbyAction.ACQUIRE, NOW, "free"),
        (LeaseState("c", "m2", 4, -1), 0, StandbyAction.ACQUIRE, NOW, "m2's lease expired"),
        (LeaseState("c", "m2", 4, 0), 0, StandbyAction.ACQUIRE, NOW, "expired"),
        (LeaseState("c", "m1", 4, 2500, holder_instance="i1"), 0, StandbyAction.ACQUIRE, NOW, "resume"),
        # our name but another agent process (a clone, a second `fos run`): wait for the expiry like anyone
        (LeaseState("c", "m1", 4, 300, holder_instance="i2"), 0, StandbyAction.WAIT, NOW + 0.3 * (1 + RHO), "m1"),
        (LeaseState("c", "m1", 4, 300), 0, StandbyAction.WAIT, NOW + 0.3 * (1 + RHO), "another agent named m1"),
        # held by another node: wake exactly at expiry (stretched by the clock-rate bound), or at the poll
        (LeaseState("c", "m2", 4, 300), 0, StandbyAction.WAIT, NOW + 0.3 * (1 + RHO), "m2 holds epoch 4"),
        (LeaseState("c", "m2", 4, 60_000), 0, StandbyAction.WAIT, NOW + 0.5, "m2 holds"),
        # holding off after a step-down, even if the lease is free
        (LeaseState("c", None, 4, -5), NOW + 0.2, StandbyAction.WAIT, NOW + 0.2, "holding off"),
        (LeaseState("c", None, 4, -5), NOW + 9, StandbyAction.WAIT, NOW + 0.5, "holding off"),
    ],
)
def test_standby_plan(state: LeaseState, not_before: float, action: StandbyAction, wake_at: float, reason: str) -> None:
    plan = plan_standby(state, "m1", "i1", NOW, poll=0.5, not_before=not_before)
    assert plan.action is action
    assert plan.wake_at == pytest.approx(wake_at)
    assert reason in plan.reason


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (HoldEvent.WORK_DONE, Decision(Role.ACTIVE, "ok")),
        (HoldEvent.FENCE_DEADLINE, Decision(Role.FENCED, "fence deadline", 5)),
        (HoldEvent.LEASE_LOST, Decision(Role.FENCED, "lost", 5)),
        (HoldEvent.STOP_REQUESTED, Decision(Role.DEMOTING, "stop requested", 0, then_stop=True)),
        (HoldEvent.APP_FAILED, Decision(Role.DEMOTING, "application failed", 30)),
        (HoldEvent.WORK_FAILED, Decision(Role.DEMOTING, "promotion failed", 30)),
    ],
)
def test_what_follows_holding(event: HoldEvent, expected: Decision) -> None:
    got = after_holding(event, "ok", hold_off=30, min_hold=5)
    assert (got.role, got.hold_off, got.then_stop) == (expected.role, expected.hold_off, expected.then_stop)
    assert expected.reason in got.reason


def test_a_failed_acquisition_is_never_retried_at_once() -> None:
    free = LeaseState("c", None, 3, None)  # e.g. a missing row the store would not create
    assert plan_retry(free, "m1", "i1", NOW, poll=0.5, not_before=0) >= NOW + MIN_RETRY_S
    held = LeaseState("c", "m2", 4, 300)
    assert plan_retry(held, "m1", "i1", NOW, poll=0.5, not_before=0) == pytest.approx(NOW + 0.3 * (1 + RHO))


HOLD = Holding(epoch=7, last_sent=100.0, fence_at=fence_deadline(100.0, 3.0, 0.2))


@pytest.mark.parametrize(
    ("sent", "outcome", "fence_at", "next_renew", "failing", "lost"),
    [
        # a success moves F to the renewal's send time + T(1-rho) - M, and the next renewal one heartbeat on
        (101.0, RenewOutcome.RENEWED, fence_deadline(101.0, 3.0, 0.2), 102.0, False, False),
        # a success that was sent before the last one (answers out of order) never moves F backwards
        (99.5, RenewOutcome.RENEWED, HOLD.fence_at, 100.5, False, False),
        # a failure leaves F alone and retries soon (a quarter heartbeat, at most 0.5 s)
        (101.0, RenewOutcome.FAILED, HOLD.fence_at, 101.2 + 0.25, True, False),
        (101.0, RenewOutcome.LOST, HOLD.fence_at, 101.2, False, True),
    ],
)
def test_renewal_outcomes(
    sent: float, outcome: RenewOutcome, fence_at: float, next_renew: float, failing: bool, lost: bool
) -> None:
    step = after_renewal(HOLD, sent, outcome, now=101.2, ttl=3.0, margin=0.2, heartbeat=1.0)
    assert step.holding.fence_at == pytest.approx(fence_at)
    assert step.holding.epoch == 7
    assert step.next_renew_at == pytest.approx(next_renew)
    assert (step.failing, step.lost) == (failing, lost)


def test_suspend_fences() -> None:
    got = after_holding(HoldEvent.SUSPENDED, "12.0s", hold_off=30, min_hold=5)
    assert got.role is Role.FENCED and "suspended" in got.reason


def _row(node: str, instance: str | None, role: str = "active", age: float | None = 0.5) -> NodeRecord:
    return NodeRecord("c", node, role, True, None, "0.1", age, instance=instance)


@pytest.mark.parametrize(
    ("rows", "found"),
    [
        ([_row("m1", "i2")], True),  # a live agent with our name and another instance: refuse to start
        ([_row("m1", "i1")], False),  # our own row (a restart with the same instance)
        ([_row("m1", "i2", role="stopped")], False),  # it stopped cleanly
        ([_row("m1", "i2", age=30.0)], False),  # not seen for many heartbeats: dead
        ([_row("m1", None)], True),  # a row of an agent that predates instance ids, still alive
        ([_row("m2", "i2")], False),  # another node
    ],
)
def test_a_live_agent_with_our_name_is_found_by_its_row(rows: list[NodeRecord], found: bool) -> None:
    assert (live_namesake(rows, "m1", "i1", heartbeat=1.0, call_timeout=0.5) is not None) is found


@pytest.mark.parametrize(
    ("planned", "last_attempt", "ip_expires_at", "due"),
    [
        # a long lifetime: the heartbeat decides
        (101.0, 100.0, 250.0, 101.0),
        # no kernel lifetime (address_driver = "none"): the heartbeat decides
        (101.0, 100.0, None, 101.0),
        # a 1 s lifetime written at 100.1: renew so that an answer within call_timeout (0.5 s) lands before it ends,
        # with RENEW_LEAD_S for the netlink write
        (101.0, 100.0, 101.1, 101.1 - 0.5 - RENEW_LEAD_S),
        # never sooner than a quarter heartbeat (at most 0.5 s) after the last attempt
        (101.0, 100.0, 100.3, 100.25),
        # renewals failing while the address is about to lapse: the retry plan decides, not a back-to-back loop
        (103.25, 103.0, 101.1, 103.25),
    ],
)
def test_a_renewal_comes_early_enough_to_extend_the_address_before_it_lapses(
    planned: float, last_attempt: float, ip_expires_at: float | None, due: float
) -> None:
    got = renewal_due(planned, last_attempt, ip_expires_at, heartbeat=1.0, call_timeout=0.5)
    assert got == pytest.approx(due)


ACQUIRE_PLAN = StandbyPlan(StandbyAction.ACQUIRE, NOW, "m2's lease expired")
WAIT_PLAN = StandbyPlan(StandbyAction.WAIT, NOW + 1.7, "m2 holds epoch 4")


@pytest.mark.parametrize(
    ("plan", "warm", "healthy", "expected"),
    [
        (ACQUIRE_PLAN, False, False, ACQUIRE_PLAN),  # cold: the app does not run on a standby, nothing to gate
        (ACQUIRE_PLAN, False, True, ACQUIRE_PLAN),
        (ACQUIRE_PLAN, True, True, ACQUIRE_PLAN),  # warm and healthy: compete
        (
            ACQUIRE_PLAN,
            True,
            False,
            StandbyPlan(StandbyAction.WAIT, NOW + 0.5, "m2's lease expired, but the application here is not healthy"),
        ),
        (WAIT_PLAN, True, False, WAIT_PLAN),  # waiting anyway: its own wake time stands
        (WAIT_PLAN, True, True, WAIT_PLAN),
        (WAIT_PLAN, False, False, WAIT_PLAN),
    ],
)
def test_warm_gate_lets_a_warm_node_compete_only_while_its_app_is_healthy(
    plan: StandbyPlan, warm: bool, healthy: bool, expected: StandbyPlan
) -> None:
    assert warm_gate(plan, warm, healthy, NOW, poll=0.5) == expected


# ---- the probe ahead of an acquisition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "not_before", "expires_at"),
    [
        (LeaseState("c", "m2", 4, 300), 0, NOW + 0.3 * (1 + RHO)),  # another node's lease: its expiry
        (LeaseState("c", "m2", 4, 60_000), 0, NOW + 60 * (1 + RHO)),  # known even while the wake is a poll
        (LeaseState("c", "m1", 4, 300, holder_instance="i2"), 0, NOW + 0.3 * (1 + RHO)),  # a namesake's lease
        (LeaseState("c", "m2", 4, -1), 0, None),  # expired: acquire now
        (LeaseState("c", None, 4, -5), 0, None),  # free
        (LeaseState("c", "m2", 4, 300), NOW + 0.2, None),  # holding off after a step-down
        (LeaseState("c", "m2", 4, 300, control=Control(maintenance_ms=1000)), 0, None),  # the control state
        (LeaseState("c", "m2", 4, 300, control=Control(disabled_ms=1000)), 0, None),
        (LeaseState("c", "m2", 4, 300, control=Control(failover_off_ms=1000)), 0, None),
        (LeaseState("c", None, 4, 300, handover_to="m3"), 0, None),  # handed over to another node
    ],
)
def test_a_standby_plan_names_the_expiry_only_when_it_waits_for_another_process_lease(
    state: LeaseState, not_before: float, expires_at: float | None
) -> None:
    plan = plan_standby(state, "m1", "i1", NOW, poll=0.5, not_before=not_before)
    assert plan.expires_at == (None if expires_at is None else pytest.approx(expires_at))


T, LEAD = 0.2, PROBE_AHEAD_LEAD_S
EXPIRY = NOW + 1.0


def waiting(wake_at: float, expires_at: float | None = EXPIRY) -> StandbyPlan:
    return StandbyPlan(StandbyAction.WAIT, wake_at, "m2 holds epoch 4", expires_at)


@pytest.mark.parametrize(
    ("plan", "now", "probing", "start"),
    [
        # the wake-up is the expiry: one round placed to end there
        (waiting(EXPIRY), NOW, True, EXPIRY - T - LEAD),
        # the wake-up is a poll, but the round must start before it: start it on the way
        (waiting(EXPIRY - 0.1), NOW, True, EXPIRY - T - LEAD),
        # the round's start lies beyond this wait's poll: the next read plans it
        (waiting(EXPIRY - T - LEAD - 0.01), NOW, True, None),
        # read late (the round's time has passed), but a whole round still fits before the expiry: at once
        (waiting(EXPIRY), EXPIRY - T - 0.01, True, EXPIRY - T - 0.01),
        (waiting(EXPIRY), EXPIRY - T, True, EXPIRY - T),
        # no whole round fits any more: the promotion probes as it always did
        (waiting(EXPIRY), EXPIRY - T + 0.01, True, None),
        (waiting(EXPIRY), EXPIRY + 0.01, True, None),
        # not probing (the none driver, probe_conflict off, or a round already under way)
        (waiting(EXPIRY), NOW, False, None),
        # a wait for anything but another process's expiry (hold-off, control state, a handover)
        (waiting(EXPIRY, expires_at=None), NOW, True, None),
        (StandbyPlan(StandbyAction.ACQUIRE, NOW, "m2's lease expired"), NOW, True, None),
    ],
)
def test_the_probe_ahead_starts_one_round_before_the_expiry_and_never_late(
    plan: StandbyPlan, now: float, probing: bool, start: float | None
) -> None:
    got = probe_ahead_at(plan, now, T, probing)
    assert got == (None if start is None else pytest.approx(start))


def test_a_round_started_as_planned_ends_before_the_standby_reads_at_the_expiry() -> None:
    plan = plan_standby(LeaseState("c", "m2", 4, 280), "m1", "i1", NOW, poll=0.3, not_before=0)
    start = probe_ahead_at(plan, NOW, T, True)
    assert start is not None and plan.expires_at is not None
    # the round listens for the probe timeout after its own overhead (measured 0.02-0.04 s): done by the read
    assert start + 0.04 + T <= plan.expires_at == plan.wake_at


@pytest.mark.parametrize(
    ("failed_at", "free", "warm", "healthy", "min_hold", "expected", "why"),
    [
        (10.0, True, True, True, 0.5, 11.0, "warm app failure, free, healthy again: a heartbeat, not the hold-off"),
        (10.0, True, True, True, 5.0, 15.0, "...but never sooner than lease.min_hold"),
        (None, True, True, True, 0.5, 40.0, "another let-go (a fence, an IP failure): the hold-off as it is"),
        (10.0, False, True, True, 0.5, 40.0, "held by another: the hold-off as it is"),
        (10.0, True, True, False, 0.5, 40.0, "own app not healthy yet: the hold-off"),
        (10.0, True, False, True, 0.5, 40.0, "cold: the hold-off"),
    ],
)
def test_warm_hold_off_ends_a_heartbeat_after_an_app_failures_let_go_when_nobody_took_the_free_lease(
    failed_at: float | None, free: bool, warm: bool, healthy: bool, min_hold: float, expected: float, why: str
) -> None:
    assert warm_hold_off(40.0, failed_at, free, warm, healthy, heartbeat=1.0, min_hold=min_hold) == expected, why
