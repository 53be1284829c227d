"""The pure rules of the control state (agent/control_rules.py), table-driven."""

from __future__ import annotations

import pytest

from agent.control_rules import (
    FAST_POLL_S,
    FailbackStep,
    HolderAction,
    left_app_must_stop,
    plan_failback,
    plan_holder,
    reminder_due,
    standby_poll,
    takeovers_since_enable,
)
from agent.roles import Decision, HoldEvent, Modes, Role, StandbyAction, after_holding, let_go_event, plan_standby
from lease import EventKind, LeaseState, NodeRecord
from lease.model import Control, Switchover

HB, C = 1.0, 0.5
KNOWN = ["m1", "m2", "m3"]


def row(node: str, role: str = "standby", age: float | None = 0.5) -> NodeRecord:
    return NodeRecord("c", node, role, None, None, "1", age)


def switchover(to: str | None = "m2", due_in_ms: int = 0, by: str = "op@h") -> Control:
    return Control(switchover=Switchover(to, due_in_ms, by, 100))


@pytest.mark.parametrize(
    ("control", "rows", "action", "detail"),
    [
        (Control(), [row("m2")], HolderAction.KEEP, ""),
        (switchover(), [row("m2")], HolderAction.HAND_OVER, "requested by op@h"),
        (switchover(due_in_ms=-1900), [row("m2")], HolderAction.HAND_OVER, "m2"),  # late, within two heartbeats
        (switchover(due_in_ms=-2100), [row("m2")], HolderAction.STALE, "2.1s after its time"),
        (switchover(due_in_ms=5000), [row("m2")], HolderAction.KEEP, ""),
        (switchover("m1"), [row("m1", "active")], HolderAction.FAIL, "m1 already holds"),
        (switchover("m9"), [], HolderAction.FAIL, "not a node of this cluster"),
        (switchover("m3"), [row("m2")], HolderAction.FAIL, "never reported"),
        (switchover(), [row("m2", age=3.6)], HolderAction.FAIL, "not alive"),
        (switchover(), [row("m2", age=3.4)], HolderAction.HAND_OVER, "m2"),
        (switchover(), [row("m2", "stopped")], HolderAction.FAIL, "not alive"),
        (switchover(), [row("m2", "hold_off")], HolderAction.FAIL, "holding off"),
        (switchover(), [row("m2", "promoting")], HolderAction.FAIL, "not a ready standby"),
        # a warm standby whose app fell sick after the request: it would not take the reserved lease (review h-rev1)
        (switchover(), [NodeRecord("c", "m2", "standby", False, None, "1", 0.5)], HolderAction.FAIL, "unhealthy"),
        (switchover(), [NodeRecord("c", "m2", "standby", True, None, "1", 0.5)], HolderAction.HAND_OVER, "m2"),
        (switchover(None), [row("m2")], HolderAction.FAIL, "names no target"),
        (Control(switchover=Switchover("m2", 0, "x", 1), maintenance_ms=5), [row("m2")], HolderAction.FAIL, "mainten"),
        (Control(switchover=Switchover("m2", 0, "x", 1), failover_off_ms=5), [row("m2")], HolderAction.FAIL, "enable"),
        (Control(disabled_ms=5, disabled_by="op@h"), [], HolderAction.LET_GO, "disabled (by op@h)"),
        (Control(switchover=Switchover("m2", 0, "x", 1), disabled_ms=5), [row("m2")], HolderAction.LET_GO, "disab"),
    ],
)
def test_what_the_holder_does_about_the_control_state(
    control: Control, rows: list[NodeRecord], action: HolderAction, detail: str
) -> None:
    plan = plan_holder(control, "m1", KNOWN, rows, HB, C)
    assert plan.action is action
    assert detail in plan.detail


@pytest.mark.parametrize(
    ("priorities", "action"),
    [
        ({"m1": 0, "m2": 10}, HolderAction.HAND_OVER),
        ({"m1": 10, "m2": 0}, HolderAction.FAIL),  # the holder's file prefers itself: no ping-pong
        ({"m1": 5, "m2": 5}, HolderAction.FAIL),
    ],
)
def test_the_holder_hands_over_for_a_fail_back_only_if_its_own_config_prefers_the_target(
    priorities: dict[str, int], action: HolderAction
) -> None:
    failback = switchover("m2", by="failback")
    assert plan_holder(failback, "m1", KNOWN, [row("m2")], HB, C, priorities=priorities).action is action
    operator = switchover("m2", by="op@h")  # an operator's switchover goes anywhere
    assert (
        plan_holder(operator, "m1", KNOWN, [row("m2")], HB, C, priorities=priorities).action is HolderAction.HAND_OVER
    )


def test_a_request_seen_in_time_is_not_stale_when_acted_on_later() -> None:
    late = switchover(due_in_ms=-5000)  # seen in time while promoting, acted on once active
    assert plan_holder(late, "m1", KNOWN, [row("m2")], HB, C, first_late=0.1).action is HolderAction.HAND_OVER
    assert plan_holder(late, "m1", KNOWN, [row("m2")], HB, C, first_late=2.5).action is HolderAction.STALE


def test_a_scheduled_switchover_wakes_the_holder_at_its_time() -> None:
    assert plan_holder(switchover(due_in_ms=2500), "m1", KNOWN, None, HB, C).wake_in == pytest.approx(2.5)


def test_failed_and_stale_requests_are_cancelled_with_their_own_event() -> None:
    failed = plan_holder(switchover("m9"), "m1", KNOWN, [], HB, C)
    stale = plan_holder(switchover(due_in_ms=-5000), "m1", KNOWN, [], HB, C)
    assert (failed.cancel_kind, stale.cancel_kind) == (EventKind.SWITCHOVER_FAILED, EventKind.SWITCHOVER_STALE)
    assert plan_holder(switchover(), "m1", KNOWN, [row("m2")], HB, C).cancel_kind is None


@pytest.mark.parametrize(
    ("control", "poll"),
    [
        (Control(), 0.5),
        (switchover("m2"), FAST_POLL_S),
        (switchover("m3"), 0.5),  # for another node
        (switchover("m2", due_in_ms=900), FAST_POLL_S),  # due within a heartbeat
        (switchover("m2", due_in_ms=1300), 0.3),  # a heartbeat before its time, then fast
        (switchover("m2", due_in_ms=3_600_000), 0.5),  # an hour ahead: no fast polling for an hour
    ],
)
def test_a_standby_polls_fast_only_while_a_switchover_to_it_is_near(control: Control, poll: float) -> None:
    assert standby_poll(LeaseState("c", "m1", 3, 2000, control=control), "m2", HB) == pytest.approx(poll)


@pytest.mark.parametrize(
    ("gate", "poll"),
    [
        ({"disabled_ms": 10}, 0.5),  # nobody hands over while disabled: the request may stay for hours
        ({"maintenance_ms": 10}, 0.5),
        ({"failover_off_ms": 10}, 0.5),
        ({}, FAST_POLL_S),
    ],
)
def test_a_standby_does_not_poll_fast_for_a_switchover_a_control_gate_holds_up(
    gate: dict[str, int], poll: float
) -> None:
    control = Control(switchover=Switchover("m2", 0, "op@h", 100), **gate)  # type: ignore[arg-type]
    assert standby_poll(LeaseState("c", "m1", 3, 2000, control=control), "m2", HB) == pytest.approx(poll)


def test_a_standby_polls_fast_while_the_lease_is_reserved_for_it() -> None:
    reserved = LeaseState("c", None, 3, 2000, handover_to="m2")
    assert standby_poll(reserved, "m2", HB) == FAST_POLL_S
    assert standby_poll(reserved, "m3", HB) == 0.5


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (LeaseState("c", "m2", 3, 2000, control=Control(maintenance_ms=5)), "m2 holds the lease"),
        (LeaseState("c", None, 3, 2000, handover_to="m2"), "m2 holds the lease"),
        (LeaseState("c", "m1", 3, -5, control=Control()), "maintenance mode is off and this node does not hold"),
        (LeaseState("c", None, 3, None), "maintenance mode is off and this node does not hold"),
        (LeaseState("c", "m1", 3, -5, control=Control(maintenance_ms=5)), None),  # ours to resume
        (LeaseState("c", "m1", 3, 2000), None),  # ours
        (LeaseState("c", "m2", 3, -5, control=Control(maintenance_ms=5)), "m2 holds"),  # m2's to resume
    ],
)
def test_a_standby_stops_an_app_left_running_once_another_node_may_serve(state: LeaseState, why: str | None) -> None:
    got = left_app_must_stop(state, "m1")
    assert got == why if why is None else (got is not None and why in got)


NOW = 1000.0


@pytest.mark.parametrize(
    ("state", "action", "wake_at", "reason"),
    [
        (LeaseState("c", None, 4, 3000, handover_to="m2"), StandbyAction.ACQUIRE, NOW, "handed over to us"),
        (LeaseState("c", None, 4, 3000, handover_to="m3"), StandbyAction.WAIT, NOW + 0.5, "reserved for m3"),
        (LeaseState("c", None, 4, 300, handover_to="m3"), StandbyAction.WAIT, NOW + 0.3 * 1.001, "reserved"),
        (LeaseState("c", None, 4, -5, handover_to="m3"), StandbyAction.ACQUIRE, NOW, "free"),  # reservation over
        (LeaseState("c", None, 4, -5, control=Control(disabled_ms=1)), StandbyAction.WAIT, NOW + 0.5, "disabled"),
        (LeaseState("c", "m1", 4, -5, control=Control(maintenance_ms=1)), StandbyAction.WAIT, NOW + 0.5, "mainten"),
        (LeaseState("c", "m1", 4, -5, control=Control(failover_off_ms=1)), StandbyAction.WAIT, NOW + 0.5, "off"),
        # the holder's own node may resume during maintenance (a restarted agent)
        (
            LeaseState("c", "m2", 4, -5, holder_instance="old", control=Control(maintenance_ms=1)),
            StandbyAction.ACQUIRE,
            NOW,
            "expired",
        ),
    ],
)
def test_a_standby_never_tries_what_the_control_state_refuses(
    state: LeaseState, action: StandbyAction, wake_at: float, reason: str
) -> None:
    plan = plan_standby(state, "m2", "i2", NOW, poll=0.5, not_before=0)
    assert (plan.action, plan.wake_at) == (action, pytest.approx(wake_at))
    assert reason in plan.reason


@pytest.mark.parametrize(
    ("event", "modes", "expected"),
    [
        (HoldEvent.STOP_REQUESTED, Modes(maintenance=True), Decision(Role.STOPPED, "maintenance", leave_running=True)),
        (HoldEvent.STOP_REQUESTED, Modes(), Decision(Role.DEMOTING, "stop requested", then_stop=True)),
        (HoldEvent.APP_FAILED, Modes(failover_off=True), Decision(Role.PROMOTING, "restarting it here", resume=True)),
        (HoldEvent.SWITCHOVER, Modes(), Decision(Role.DEMOTING, "switchover to m2", handover_to="m2")),
        (HoldEvent.DISABLED, Modes(), Decision(Role.DEMOTING, "letting go", event=EventKind.DEMOTED)),
        (HoldEvent.MAINTENANCE_OVER, Modes(), Decision(Role.PROMOTING, "maintenance over", resume=True)),
        # Maintenance: a failed promotion or IP neither stops the application nor steps down (no stop/start loop).
        (HoldEvent.WORK_FAILED, Modes(maintenance=True), Decision(Role.ACTIVE, "promotion failed during maint")),
        (HoldEvent.IP_FAILED, Modes(maintenance=True), Decision(Role.ACTIVE, "during maintenance")),
        (HoldEvent.WORK_FAILED, Modes(), Decision(Role.DEMOTING, "promotion failed")),
    ],
)
def test_what_follows_holding_under_the_control_state(event: HoldEvent, modes: Modes, expected: Decision) -> None:
    got = after_holding(event, "m2", hold_off=30, min_hold=5, modes=modes)
    assert (got.role, got.leave_running, got.resume, got.handover_to, got.event, got.then_stop) == (
        expected.role,
        expected.leave_running,
        expected.resume,
        expected.handover_to,
        expected.event,
        expected.then_stop,
    )
    assert expected.reason in got.reason


@pytest.mark.parametrize(
    ("decision", "kind"),
    [
        (Decision(Role.DEMOTING, "x", handover_to="m2"), None),  # the handover records HANDOVER itself
        (Decision(Role.DEMOTING, "x", event=EventKind.DEMOTED), EventKind.DEMOTED),
        (Decision(Role.DEMOTING, "x", then_stop=True), EventKind.DEMOTED),
        (Decision(Role.DEMOTING, "x", 30), EventKind.STEPPED_DOWN),
    ],
)
def test_the_event_recorded_after_letting_go(decision: Decision, kind: EventKind | None) -> None:
    assert let_go_event(decision) == kind


PRIO = {"m1": 10, "m2": 0, "m3": 5}


@pytest.mark.parametrize(
    ("holder", "control", "rows", "ready_for", "step", "why"),
    [
        ("m2", Control(), [row("m1")], 300, FailbackStep.REQUEST, "priority 10"),
        ("m2", Control(), [row("m1")], 299, FailbackStep.WAIT, "ready for"),
        ("m3", Control(), [row("m1")], 300, FailbackStep.REQUEST, "priority 10"),
        (None, Control(), [row("m1")], 300, FailbackStep.WAIT, "no other node"),
        ("m1", Control(), [], 300, FailbackStep.WAIT, "no other node"),
        ("m2", switchover("m3"), [row("m1")], 300, FailbackStep.WAIT, "control state"),
        ("m2", Control(maintenance_ms=1), [row("m1")], 300, FailbackStep.WAIT, "control state"),
        ("m2", Control(failover_off_ms=1), [row("m1")], 300, FailbackStep.WAIT, "control state"),
        ("m2", Control(disabled_ms=1), [row("m1")], 300, FailbackStep.WAIT, "control state"),
    ],
)
def test_the_preferred_node_asks_for_the_role_back_after_the_delay(
    holder: str | None, control: Control, rows: list[NodeRecord], ready_for: float, step: FailbackStep, why: str
) -> None:
    got, reason = plan_failback("m1", PRIO, holder, control, rows, ready_for, 300, HB, C)
    assert got is step and why in reason


def test_only_the_highest_priority_live_standby_asks_for_the_fail_back() -> None:
    live_m1, dead_m1 = row("m1"), row("m1", age=60)
    assert plan_failback("m3", PRIO, "m2", Control(), [live_m1], 300, 300, HB, C)[0] is FailbackStep.WAIT
    assert plan_failback("m3", PRIO, "m2", Control(), [dead_m1], 300, 300, HB, C)[0] is FailbackStep.REQUEST
    assert plan_failback("m2", PRIO, "m3", Control(), [], 300, 300, HB, C)[0] is FailbackStep.WAIT  # lower prio


def ev(*pairs: str) -> list[tuple[str, str | None]]:
    """Events newest first, each "kind:node"."""
    return [(p.split(":")[0], p.split(":")[1]) for p in pairs]


@pytest.mark.parametrize(
    ("events", "in_maintenance", "count"),
    [
        (ev("takeover:m2", "stepped_down:m1", "acquired:m1", "takeover:m1"), False, 3),
        (ev("takeover:m1", "enabled:x", "takeover:m2", "stepped_down:m1"), False, 1),  # `fos enable` resets
        (ev("handover:m1", "demoted:m1", "fenced:m1", "released:m1", "acquired:m1"), False, 0),  # on purpose
        # A node taking back its own lease (a restarted agent, another instance id) is no take-over.
        (ev("takeover:m1", "takeover:m1", "acquired:m1"), False, 0),
        (ev("takeover:m1", "takeover:m2", "acquired:m1"), False, 2),
        # Nothing during maintenance counts: between ON and OFF, or since ON while it is still on.
        (ev("takeover:m1", "maintenance_off:x", "stepped_down:m1", "takeover:m2", "maintenance_on:x"), False, 1),
        (ev("stepped_down:m1", "takeover:m2", "maintenance_on:x", "takeover:m2", "acquired:m1"), True, 1),
    ],
)
def test_take_overs_counted_for_anti_flap(
    events: list[tuple[str, str | None]], in_maintenance: bool, count: int
) -> None:
    assert takeovers_since_enable(events, in_maintenance) == count


@pytest.mark.parametrize(
    ("ms", "remind_after", "reminded", "due"),
    [
        (None, 3600, 0, None),
        (3_599_000, 3600, 0, None),
        (3_600_000, 3600, 0, 1),
        (3_700_000, 3600, 1, None),  # once per period
        (7_300_000, 3600, 1, 2),
        (7_300_000, 0, 0, None),
    ],
)
def test_maintenance_reminders_once_per_period(ms: int | None, remind_after: float, reminded: int, due: int) -> None:
    assert reminder_due(ms, remind_after, reminded) == due
