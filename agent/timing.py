"""The timing model of ../shared/design/timing.md as pure functions, and the start-up check that refuses unsafe
settings.

Symbols: T lease ttl, H heartbeat, C per-call DB deadline, RHO clock-rate bound, M fence margin, G how late the
kernel removes an address whose lifetime ran out (netops.KERNEL_LATENESS_S: the kernel re-arms its lifetime check
at least a second after each run, so up to about 1 s, plus a late kworker or a held RTNL lock; budgeted 2 s).
"""

from __future__ import annotations

import math

from netops import KERNEL_LATENESS_S  # G, measured in tests/test_netops_lifetime.py

from .config import Config, ConfigError

RHO = 1e-3
MIN_FENCE_MARGIN_S = 0.1  # M must cover removing the address, scheduling jitter and DB timestamp resolution
MIN_LIFETIME_S = 1  # the kernel counts address lifetimes in whole seconds
MIN_RETRY_S = 0.02  # the shortest wait between two attempts of any loop: nothing may spin
# The agent rewrites its fos_node row when its role or app health changes, else every this many heartbeats (a
# write per heartbeat cost each idle agent a database write a second). Whoever judges a row's age allows for it:
# `fos status`/doctor call a row older than 3 heartbeats down, a live namesake is watched for longer than this.
NODE_ROW_HEARTBEATS = 2


def fence_deadline(sent: float, ttl: float, margin: float) -> float:
    """F = s + T(1 - RHO) - M: the local monotonic instant by which the holder must have dropped the IP."""
    return sent + ttl * (1 - RHO) - margin


def address_lifetime(deadline: float, now: float) -> int | None:
    """Whole seconds L so that the kernel removes the address by now + L + G <= F; None if not even 1 s fits."""
    lifetime = math.floor(deadline - now - KERNEL_LATENESS_S)
    return lifetime if lifetime >= MIN_LIFETIME_S else None


def min_ttl(call_timeout: float, margin: float) -> float:
    """The smallest lease ttl that leaves a 1 s kernel lifetime after a renewal answered at its deadline."""
    return (MIN_LIFETIME_S + margin + call_timeout + KERNEL_LATENESS_S) / (1 - RHO)


def check(cfg: Config) -> None:
    """Refuse settings under which the safety argument does not hold; one clear message each."""
    t, h, c, m = cfg.lease.ttl, cfg.lease.heartbeat, cfg.call_timeout, cfg.lease.fence_margin
    if h > t / 3:
        raise ConfigError(
            f"lease.heartbeat = {h:g} is more than lease.ttl / 3 = {t / 3:g}: the holder would get fewer than three "
            "renewal attempts per lease; lower lease.heartbeat or raise lease.ttl"
        )
    if c > h / 2:
        raise ConfigError(
            f"database.call_timeout = {c:g} is more than lease.heartbeat / 2 = {h / 2:g}: a hung database call would "
            "delay the next renewal; lower database.call_timeout"
        )
    if m < MIN_FENCE_MARGIN_S:
        raise ConfigError(
            f"lease.fence_margin = {m:g} is below {MIN_FENCE_MARGIN_S:g} s, too little to drop the common IP in time: "
            "raise lease.fence_margin"
        )
    if h + c >= t * (1 - RHO) - m:
        raise ConfigError(
            f"lease.heartbeat + database.call_timeout = {h + c:g} does not fit before the self-fence deadline "
            f"ttl(1-rho) - fence_margin = {t * (1 - RHO) - m:g}: lower them or raise lease.ttl"
        )
    if cfg.address_driver == "netlink":
        room = t * (1 - RHO) - m - c - KERNEL_LATENESS_S
        if room < MIN_LIFETIME_S:
            raise ConfigError(
                f"lease.ttl = {t:g} leaves {room:.2f} s for the common IP's kernel lifetime, which must be at least "
                f"{MIN_LIFETIME_S} s (whole seconds) so the kernel drops it before the lease can expire: raise "
                f"lease.ttl to at least {min_ttl(c, m):.2f} or lower database.call_timeout and lease.fence_margin"
            )
