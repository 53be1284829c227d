"""agent/metrics.py: what /metrics shows after a sequence of reads, and that a read changing nothing rebuilds
nothing (set_holder and set_control run on every lease read: issue #14, footprint)."""

from __future__ import annotations

import pytest

from agent.metrics import Metrics
from lease.model import SEES_DISABLED, SEES_MAINTENANCE


def holder_lines(m: Metrics) -> list[str]:
    return sorted(line for line in m.render().decode().splitlines() if line.startswith("fos_lease_holder{"))


@pytest.mark.parametrize(
    ("seen", "shown"),
    [
        (["m1"], ['fos_lease_holder{holder="m1"} 1.0']),
        (["m1", "m1", "m1"], ['fos_lease_holder{holder="m1"} 1.0']),
        (["m1", "m2"], ['fos_lease_holder{holder="m2"} 1.0']),
        (["m1", None], []),
        ([None, "m2", "m2"], ['fos_lease_holder{holder="m2"} 1.0']),
        (["m1", None, "m1"], ['fos_lease_holder{holder="m1"} 1.0']),
    ],
)
def test_the_lease_holder_shown_is_the_last_one_seen(seen: list[str | None], shown: list[str]) -> None:
    m = Metrics()
    for holder in seen:
        m.set_holder(holder)
    assert holder_lines(m) == shown


def test_seeing_the_same_holder_again_keeps_its_sample() -> None:
    m = Metrics()
    m.set_holder("m1")
    sample = m.lease_holder.labels(holder="m1")
    m.set_holder("m1")
    assert m.lease_holder.labels(holder="m1") is sample


@pytest.mark.parametrize(
    ("seen", "on"),
    [
        ([frozenset({SEES_MAINTENANCE})], {SEES_MAINTENANCE}),
        ([frozenset({SEES_MAINTENANCE}), frozenset({SEES_MAINTENANCE})], {SEES_MAINTENANCE}),
        ([frozenset({SEES_MAINTENANCE}), frozenset()], set()),
        ([frozenset(), frozenset({SEES_DISABLED, SEES_MAINTENANCE})], {SEES_DISABLED, SEES_MAINTENANCE}),
    ],
)
def test_the_control_states_shown_are_the_last_ones_seen(seen: list[frozenset[str]], on: set[str]) -> None:
    m = Metrics()
    for states in seen:
        m.set_control(states)
    text = m.render().decode()
    for state in ("maintenance", "disabled", "failover_off"):
        assert f'fos_control_state{{state="{state}"}} {1.0 if state in on else 0.0}' in text
