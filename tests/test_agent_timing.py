"""The timing rules of shared/design/timing.md: what is refused at start-up, and the fence arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import ConfigError, parse
from agent.timing import KERNEL_LATENESS_S, RHO, address_lifetime, check, fence_deadline, min_ttl


def cfg(
    ttl: float, heartbeat: float, call_timeout: float | None = None, margin: float = 0.2, driver: str = "netlink"
) -> Any:
    db: dict[str, Any] = {"dsn": "Driver=SQLite3;Database=/tmp/x.db"}
    if call_timeout is not None:
        db["call_timeout"] = call_timeout
    return parse(
        {
            "cluster": {"name": "c", "common_ip": "10.0.0.5/24", "address_driver": driver},
            "nodes": [{"name": "m1", "interface": "eth0"}],
            "database": db,
            "lease": {"ttl": ttl, "heartbeat": heartbeat, "fence_margin": margin},
        }
    )


@pytest.mark.parametrize(("ttl", "hb"), [(180, 10), (4, 1), (3.6, 0.6), (10, 3)])
def test_documented_timings_are_accepted(ttl: float, hb: float) -> None:
    check(cfg(ttl, hb))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 10, "heartbeat": 4}, r"lease\.heartbeat = 4 is more than lease\.ttl / 3"),
        ({"ttl": 30, "heartbeat": 5, "call_timeout": 3}, r"database\.call_timeout = 3 is more than"),
        ({"ttl": 30, "heartbeat": 5, "margin": 0.01}, r"lease\.fence_margin = 0\.01 is below"),
        ({"ttl": 1.5, "heartbeat": 0.5}, r"lease\.ttl = 1\.5 leaves .* kernel lifetime"),
        # With the kernel's lateness of up to G = 2 s, ttl 3 no longer leaves a 1 s lifetime.
        ({"ttl": 3, "heartbeat": 0.5}, r"lease\.ttl = 3 leaves .* raise lease\.ttl to at least 3\.45"),
    ],
)
def test_unsafe_timings_are_refused_with_the_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(cfg(**kwargs))


def test_without_a_kernel_lifetime_a_short_ttl_is_allowed() -> None:
    check(cfg(1.5, 0.5, driver="none"))


def test_fence_deadline_is_before_the_database_can_expire_the_lease() -> None:
    sent = 1000.0
    f = fence_deadline(sent, ttl=3.0, margin=0.2)
    # The database's expiry is no earlier than sent + ttl in real time; the local clock may run fast by RHO.
    assert f < sent + 3.0 * (1 - RHO)
    assert f == pytest.approx(sent + 3.0 * (1 - RHO) - 0.2)


def test_address_lifetime_ends_before_the_fence_deadline_including_kernel_lateness() -> None:
    now, deadline = 100.0, 104.3
    lifetime = address_lifetime(deadline, now)
    assert lifetime == 2
    assert now + lifetime + KERNEL_LATENESS_S <= deadline


def test_address_lifetime_is_none_when_not_even_a_second_fits() -> None:
    assert address_lifetime(102.9, 100.0) is None


def test_the_minimum_ttl_leaves_exactly_one_second_of_lifetime() -> None:
    floor = min_ttl(call_timeout=0.25, margin=0.2)
    assert floor == pytest.approx((1 + 0.2 + 0.25 + KERNEL_LATENESS_S) / (1 - RHO))
    check(cfg(floor + 0.01, 0.5, call_timeout=0.25))
    with pytest.raises(ConfigError):
        check(cfg(floor - 0.01, 0.5, call_timeout=0.25))
