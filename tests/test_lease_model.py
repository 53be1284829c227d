"""The pure rules of lease.model: the acquire rule as a table (the SQL statement's twin), reservations, what an
agent reports it sees, and who did what from an event's detail."""

from __future__ import annotations

import pytest

from lease.model import Control, LeaseState, Switchover, by_detail, detail_by, sees_states, switchover_detail

MAINT = Control(maintenance_ms=5, maintenance_by="op@h")
DISABLED = Control(disabled_ms=5, disabled_by="op@h")
OFF = Control(failover_off_ms=5, failover_off_reason="4 take-overs")


@pytest.mark.parametrize(
    ("state", "node", "instance", "refused"),
    [
        (LeaseState("c", None, 0, None), "m1", None, None),
        (LeaseState("c", "m2", 3, 500), "m1", "i1", "held by m2 for another 500 ms"),
        (LeaseState("c", "m2", 3, 0), "m1", "i1", None),
        (LeaseState("c", "m1", 3, 500, holder_instance="i1"), "m1", "i1", None),
        (LeaseState("c", "m1", 3, 500, holder_instance="i1"), "m1", "i2", "held by m1 for another 500 ms"),
        (LeaseState("c", "m1", 3, 500), "m1", None, None),
        (LeaseState("c", None, 3, 0, control=DISABLED), "m1", None, "the cluster is disabled (by op@h)"),
        (LeaseState("c", "m1", 3, 500, holder_instance="i", control=DISABLED), "m1", "i", "the cluster is disabled"),
        (LeaseState("c", "m1", 3, 500, holder_instance="i", control=MAINT), "m1", "i", None),
        (LeaseState("c", "m1", 3, -9, control=MAINT), "m1", "other", None),
        (LeaseState("c", "m1", 3, -9, control=MAINT), "m2", None, "maintenance mode is on (by op@h)"),
        (LeaseState("c", None, 3, -9, control=MAINT), "m1", None, "maintenance mode is on"),
        (LeaseState("c", "m1", 3, -9, control=OFF), "m1", None, None),
        (LeaseState("c", "m1", 3, -9, control=OFF), "m2", None, "automatic failover is off (4 take-overs)"),
        (LeaseState("c", None, 3, 0, handover_to="m1", control=MAINT), "m1", "i9", None),  # released by m1
        (LeaseState("c", None, 3, 0, handover_to="m1", control=MAINT), "m2", None, "maintenance mode is on"),
        (LeaseState("c", None, 3, 0, handover_to="m1", control=OFF), "m1", None, None),
        (LeaseState("c", None, 3, 0, handover_to="m1", control=OFF), "m2", "i2", "automatic failover is off"),
        (LeaseState("c", None, 3, 900, handover_to="m2"), "m2", None, None),
        (LeaseState("c", None, 3, 900, handover_to="m2"), "m1", "i1", "reserved for m2 by a handover"),
        (LeaseState("c", None, 3, 0, handover_to="m2"), "m1", "i1", None),
        (LeaseState("c", None, 3, 900), "m1", "i1", None),  # released: free at once
    ],
)
def test_acquire_refusal_states_the_compare_and_set_rule(
    state: LeaseState, node: str, instance: str | None, refused: str | None
) -> None:
    got = state.acquire_refusal(node, instance)
    if refused is None:
        assert got is None
    else:
        assert got is not None and got.startswith(refused)


def test_a_reservation_is_only_a_free_lease_with_a_target_and_time_left() -> None:
    assert LeaseState("c", None, 3, 900, handover_to="m2").reserved_for == "m2"
    assert LeaseState("c", None, 3, 0, handover_to="m2").reserved_for is None
    assert LeaseState("c", "m1", 3, 900, handover_to="m2").reserved_for is None
    assert not LeaseState("c", None, 3, 900, handover_to="m2").held


def test_what_an_agent_sees_round_trips_through_the_node_row() -> None:
    assert Control().sees() == "" and sees_states("") == frozenset()
    both = Control(maintenance_ms=1, disabled_ms=1, failover_off_ms=1).sees()
    assert both == "disabled,maintenance,failover_off"
    assert sees_states(both) == {"disabled", "maintenance", "failover_off"}
    assert sees_states(None) is None


def test_a_switchover_is_due_once_its_time_has_come() -> None:
    assert Switchover("m2", 0, "op@h", 5).due and Switchover("m2", -3, None, 5).due
    assert not Switchover("m2", 1, None, 5).due


@pytest.mark.parametrize(
    ("detail", "by"),
    [
        (switchover_detail("m2", 0, "alice@db1"), "alice@db1"),
        (switchover_detail("m2", 60_000, "failback"), "failback"),
        (by_detail("", "bob@h"), "bob@h"),
        (by_detail("target m3 not seen for 31 s", "m1"), "m1"),
        ("m2 (epoch 4) expired 12 ms before the read", None),
        ("stand by me", None),
        (None, None),
    ],
)
def test_who_did_it_is_read_back_from_the_event_detail(detail: str | None, by: str | None) -> None:
    assert detail_by(detail) == by
