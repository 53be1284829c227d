"""`fos history`'s pure parts: --since, and the transitions (phases, trigger, epoch) read from events."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from agent.history import format_timeline, parse_since, timeline
from lease import Event, EventKind
from lease.model import by_detail, switchover_detail

T0 = datetime(2026, 11, 26, 1, 0, 0, tzinfo=UTC)


def ev(n: int, ms: int, node: str | None, kind: str, epoch: int | None, detail: str | None = None) -> Event:
    return Event(n, "c", T0 + timedelta(milliseconds=ms), node, kind, epoch, detail)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 90_000),
        ("90", 90_000),
        ("30m", 1_800_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        ("1h30m", 5_400_000),
        ("0.5s", 500),
        ("2026-11-26T00:00:00+00:00", 7_200_000),
        ("2026-11-26T02:00:00+01:00", 3_600_000),
        ("3652d", 3652 * 86_400_000),  # ten years is the most
    ],
)
def test_since_takes_a_duration_or_a_past_time(text: str, ms: int) -> None:
    assert parse_since(text, now=T0 + timedelta(hours=1)) == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "neither a duration nor a time: give e.g. 2h"),
        ("0s", "no time at all"),
        ("2026-11-26T00:00:00", "has no UTC offset: add one"),
        ("2027-01-01T00:00:00+00:00", "is in the future"),
        ("", "neither a duration nor a time"),
        ("3653d", "'3653d' is more than 10 years back: give at most 3652d"),
        ("99999999999999h", "is more than 10 years back"),
        ("2016-11-25T00:00:00+00:00", "is more than 10 years back"),
    ],
)
def test_a_bad_since_is_refused_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_since(text, now=T0)


def test_a_fault_take_over_starts_at_the_expiry_and_ends_when_the_app_is_healthy() -> None:
    events = [
        ev(1, 0, "m1", EventKind.ACQUIRED, 1, "the lease was free"),
        ev(2, 100, "m1", EventKind.IP_BOUND, 1),
        ev(3, 900, "m1", EventKind.PROMOTED, 1),
        ev(4, 10_000, "m2", EventKind.TAKEOVER, 2, "m1 (epoch 1) expired 250 ms before the read"),
        ev(5, 10_020, "m2", EventKind.IP_BOUND, 2),
        ev(6, 11_020, "m2", EventKind.PROMOTED, 2, "serving"),
    ]
    first, second = timeline(events)
    assert (first.epoch, first.trigger, first.start_at) == (1, "start", None)
    assert first.durations() == {"to_acquire": None, "to_bind": 0.1, "to_healthy": 0.8, "total": 0.9}
    assert (second.epoch, second.node, second.from_node, second.start) == (2, "m2", "m1", "expired")
    assert second.trigger.startswith("fault")
    assert second.durations() == {"to_acquire": 0.25, "to_bind": 0.02, "to_healthy": 1.0, "total": 1.27}
    phases = second.as_dict()["phases"]
    assert phases["expired"] == (T0 + timedelta(milliseconds=9750)).isoformat()


@pytest.mark.parametrize(
    ("request_detail", "trigger"),
    [
        (switchover_detail("m2", 0, "alice@db1"), "operator alice@db1"),
        (switchover_detail("m2", 60_000, "alice@db1"), "schedule (by alice@db1)"),
        (switchover_detail("m2", 0, "failback"), "fail-back"),
    ],
)
def test_a_switchover_starts_at_the_handover_and_names_who_asked(request_detail: str, trigger: str) -> None:
    events = [
        ev(1, 0, "m1", EventKind.ACQUIRED, 4),
        ev(2, 5_000, None, EventKind.SWITCHOVER_REQUESTED, None, request_detail),
        ev(3, 5_600, "m1", EventKind.HANDOVER, 4, "to m2, reserved for 3000 ms"),
        ev(4, 5_650, "m2", EventKind.ACQUIRED, 5, "handed over to this node"),
        ev(5, 5_700, "m2", EventKind.IP_BOUND, 5),
        ev(6, 6_700, "m2", EventKind.PROMOTED, 5),
        ev(7, 6_710, "m2", EventKind.SWITCHOVER_DONE, 5),
    ]
    t = timeline(events)[-1]
    assert (t.epoch, t.from_node, t.node, t.start, t.trigger) == (5, "m1", "m2", "handed over", trigger)
    assert t.durations() == {"to_acquire": 0.05, "to_bind": 0.05, "to_healthy": 1.0, "total": 1.1}


def test_a_step_down_or_fence_is_a_fault_and_a_graceful_stop_a_release() -> None:
    # The agent records why it let go after its release: that event may follow the next node's acquisition.
    events = [
        ev(1, 0, "m1", EventKind.ACQUIRED, 1),
        ev(2, 1_500, "m1", EventKind.RELEASED, 1, "the application failed: stepping down"),
        ev(3, 1_600, "m2", EventKind.ACQUIRED, 2),
        ev(4, 1_610, "m1", EventKind.STEPPED_DOWN, 1, "the application failed"),
        ev(5, 9_000, "m2", EventKind.RELEASED, 2, "SIGTERM: letting go"),
        ev(6, 9_050, "m2", EventKind.DEMOTED, 2, "SIGTERM: letting go"),
        ev(7, 9_100, "m1", EventKind.ACQUIRED, 3),
        ev(8, 20_000, "m1", EventKind.RESUMED, 4, "re-acquired own lease of epoch 3"),
        ev(9, 30_000, "m1", EventKind.FENCED, 4, "no renewal before the fence deadline"),
        ev(10, 30_100, "m1", EventKind.RELEASED, 4, "fenced"),
        ev(11, 30_200, "m2", EventKind.ACQUIRED, 5),
    ]
    _, down, stop, resumed, fenced = timeline(events)
    assert (down.trigger, down.start, down.durations()["to_acquire"]) == (
        "fault (stepped down: the application failed)",
        "released",
        0.1,
    )
    assert stop.trigger == "release (SIGTERM: letting go)" and stop.from_node == "m2"
    assert resumed.trigger.startswith("restart") and resumed.start_at is None
    assert fenced.trigger == "fault (fenced: no renewal before the fence deadline)"


def test_the_text_timeline_lists_every_event_and_each_transitions_phases() -> None:
    events = [
        ev(1, 0, None, EventKind.SWITCHOVER_REQUESTED, None, switchover_detail("m2", 0, "alice@db1")),
        ev(2, 600, "m1", EventKind.HANDOVER, 4),
        ev(3, 650, "m2", EventKind.ACQUIRED, 5),
        ev(4, 700, "m2", EventKind.IP_BOUND, 5),
        ev(5, 1_700, "m2", EventKind.PROMOTED, 5),
        ev(6, 2_000, None, EventKind.MAINTENANCE_ON, None, by_detail("", "bob@db2")),
    ]
    text = format_timeline("c", events, timeline(events))
    assert "2026-11-26 01:00:02.000  -            maintenance_on        epoch -     by bob@db2" in text
    assert "  epoch 5: m1 -> m2, trigger: operator alice@db1" in text
    assert (
        "handed over 01:00:00.600 -> acquired 01:00:00.650 (+0.050 s) -> IP bound 01:00:00.700 (+0.050 s) "
        "-> app healthy 01:00:01.700 (+1.000 s); total 1.100 s" in text
    )
    assert format_timeline("c", [], []) == "cluster c: no events in this period"
