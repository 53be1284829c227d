"""The pure decision rules, table-driven with an injected clock reading."""

from __future__ import annotations

import pytest

from agent.roles import Decision, HoldEvent, Role, StandbyAction, after_holding, plan_standby
from agent.timing import RHO
from lease import LeaseState

NOW = 1000.0


@pytest.mark.parametrize(
    ("state", "not_before", "action", "wake_at", "reason"),
    [
        (LeaseState("c", None, 0, None), 0, StandbyAction.ACQUIRE, NOW, "free"),
        (LeaseState("c", None, 4, -50), 0, StandbyAction.ACQUIRE, NOW, "free"),
        (LeaseState("c", "m2", 4, -1), 0, StandbyAction.ACQUIRE, NOW, "m2's lease expired"),
        (LeaseState("c", "m2", 4, 0), 0, StandbyAction.ACQUIRE, NOW, "expired"),
        (LeaseState("c", "m1", 4, 2500), 0, StandbyAction.ACQUIRE, NOW, "resume"),
        # held by another node: wake exactly at expiry (stretched by the clock-rate bound), or at the poll
        (LeaseState("c", "m2", 4, 300), 0, StandbyAction.WAIT, NOW + 0.3 * (1 + RHO), "m2 holds epoch 4"),
        (LeaseState("c", "m2", 4, 60_000), 0, StandbyAction.WAIT, NOW + 0.5, "m2 holds"),
        # holding off after a step-down, even if the lease is free
        (LeaseState("c", None, 4, -5), NOW + 0.2, StandbyAction.WAIT, NOW + 0.2, "holding off"),
        (LeaseState("c", None, 4, -5), NOW + 9, StandbyAction.WAIT, NOW + 0.5, "holding off"),
    ],
)
def test_standby_plan(state: LeaseState, not_before: float, action: StandbyAction, wake_at: float, reason: str) -> None:
    plan = plan_standby(state, "m1", NOW, poll=0.5, not_before=not_before)
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
