"""The pure rules: which events become which notices, what a take-over message says, when the standby is missing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.config_notify import NOTIFY_KINDS
from agent.notify_rules import EVENT_TO_NOTICE, EventFolder, Notice, dedup_key, standby_missing
from lease import Event, NodeRecord

T0 = datetime(2026, 11, 26, 1, 0, 0, tzinfo=UTC)


def ev(id_: int, kind: str, node: str | None = "m2", epoch: int | None = 8, detail: str = "", dt: float = 0) -> Event:
    return Event(id_, "c", T0 + timedelta(seconds=dt), node, kind, epoch, detail)


def folder(kinds: tuple[str, ...] = NOTIFY_KINDS, min_interval: float = 0) -> EventFolder:
    return EventFolder("c", 4.0, kinds, min_interval, promotion_wait=10)


TAKEOVER = "m1 (epoch 7) expired 500 ms before the read"


def test_every_notification_kind_has_an_event_and_every_mapped_event_a_known_kind() -> None:
    assert set(EVENT_TO_NOTICE.values()) == set(NOTIFY_KINDS)


@pytest.mark.parametrize(
    ("event_kind", "expected"),
    [
        ("fenced", ["fenced"]),
        ("stepped_down", ["stepped_down"]),
        ("standby_missing", ["standby_missing"]),
        ("standby_back", ["standby_back"]),
        ("database_back", ["database_back"]),
        ("switchover_done", ["switchover_done"]),
        ("maintenance_reminder", ["maintenance_reminder"]),
        ("flapping", ["flapping"]),
        ("acquired", []),
        ("released", []),
        ("promoted", []),
        ("renamed_by_a_future_release", []),
    ],
)
def test_an_event_becomes_its_notice_or_none(event_kind: str, expected: list[str]) -> None:
    assert [n.kind for n in folder().feed(ev(1, event_kind), 0)] == expected


def test_a_takeover_waits_for_the_promotion_and_says_how_long_the_service_was_down() -> None:
    f = folder()
    assert f.feed(ev(10, "takeover", detail=TAKEOVER), 0) == []
    [n] = f.feed(ev(11, "promoted", dt=1.5), 1)
    assert (n.kind, n.node, n.epoch, n.key) == ("master_node_down", "m2", 8, "master_node_down.10")
    # expired 0.5 s before the take-over; the last renewal was a ttl (4 s) before that; served 1.5 s after
    assert n.facts["down_at_most_s"] == 6.0 and n.facts["expiry_to_serving_s"] == 2.0
    assert n.facts["previous_holder"] == "m1" and n.facts["previous_epoch"] == 7
    assert n.summary == "m2 took over from m1 (epoch 8); the service was down for at most 6s"


def test_a_takeover_without_promotion_is_sent_after_the_wait_and_a_failed_promotion_at_once() -> None:
    f = folder()
    f.feed(ev(10, "takeover", detail=TAKEOVER), 0)
    assert f.due(9.9) == []
    [n] = f.due(10)
    assert "down_at_most_s" not in n.facts and n.facts["serving"].startswith("not confirmed")
    f.feed(ev(12, "takeover", epoch=9, detail=TAKEOVER), 20)
    kinds = [n.kind for n in f.feed(ev(13, "stepped_down", epoch=9), 21)]
    assert kinds == ["master_node_down", "stepped_down"]


def test_events_not_chosen_in_notify_events_are_not_sent() -> None:
    f = folder(kinds=("fenced",))
    assert f.feed(ev(1, "takeover", detail=TAKEOVER), 0) == [] and f.due(100) == []
    assert [n.kind for n in f.feed(ev(2, "fenced"), 0)] == ["fenced"]


def test_min_interval_gives_repeats_of_a_kind_one_key_per_window() -> None:
    a, b, c = ev(1, "stepped_down", dt=0), ev(2, "stepped_down", dt=200), ev(3, "stepped_down", dt=400)
    assert dedup_key("stepped_down", a, 0) != dedup_key("stepped_down", b, 0)
    assert dedup_key("stepped_down", a, 300) == dedup_key("stepped_down", b, 300)
    assert dedup_key("stepped_down", b, 300) != dedup_key("stepped_down", c, 300)


def test_a_notice_survives_the_outbox_and_renders_mail_and_webhook() -> None:
    [n] = folder().feed(ev(5, "fenced", detail="could not renew in time"), 0)
    assert Notice.from_json(n.to_json()) == n
    body = n.webhook_body("m1")
    assert (
        body["text"] == "[fos c] CRITICAL fenced: m2 dropped the common IP and fenced itself: could not renew in time"
    )
    assert body["kind"] == "fenced" and body["sent_by"] == "m1" and body["key"] == "fenced.5"
    assert n.subject.startswith("[fos c] CRITICAL fenced: ") and "epoch" in n.text("m1")


def node(name: str, age: float | None) -> NodeRecord:
    return NodeRecord("c", name, "standby", True, None, None, age)


@pytest.mark.parametrize(
    ("nodes", "holding_for", "missing"),
    [
        ([node("m1", 0.1), node("m2", 1.0)], 100, False),
        ([node("m1", 0.1), node("m2", 8.1)], 100, True),
        ([node("m1", 0.1), node("m2", 8.0)], 100, False),
        ([node("m1", 0.1)], 100, True),
        ([node("m1", 0.1)], 7.9, False),  # not before holding for the delay itself
        ([node("m1", 0.1), node("m2", None), node("m3", 2)], 100, False),
    ],
)
def test_the_standby_is_missing_when_no_other_node_was_seen_within_the_delay(
    nodes: list[NodeRecord], holding_for: float, missing: bool
) -> None:
    assert standby_missing(nodes, "m1", 8.0, holding_for) is missing


def test_a_huge_event_detail_still_fits_the_outbox_body() -> None:
    from lease.outbox import MAX_BODY

    [n] = folder().feed(ev(5, "fenced", detail="x" * 20_000), 0)
    assert len(n.to_json()) < MAX_BODY and Notice.from_json(n.to_json()) == n
