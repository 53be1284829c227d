"""Values the lease store returns. Durations are in milliseconds measured on the database clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

MAX_MS = 2**31 - 1  # the statements add milliseconds to the clock as a 32-bit integer (24.8 days)


MAX_LOOKBACK_MS = 3652 * 86_400_000  # history and anti-flap look back at most ten years (3652 days)


def check_lookback(value: int, what: str) -> int:
    """A look-back on the database clock (list_events since_ms, count_events within_ms): 0 to ten years."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOOKBACK_MS:
        raise ValueError(f"{what} must be an integer from 0 to {MAX_LOOKBACK_MS} ms (at most 10 years), not {value!r}")
    return value


def check_ms(value: int, what: str, low: int = 0) -> int:
    """A millisecond count the statements can add to the database clock: an integer from `low` to MAX_MS."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_MS:
        raise ValueError(f"{what} must be an integer from {low} to {MAX_MS} milliseconds, not {value!r}")
    return value


@dataclass(frozen=True)
class Switchover:
    """A pending switchover request on the lease row (at most one per cluster).

    `to` is the target node (the CLI always writes one; None would mean "the best other node"). `due_in_ms` is
    the due time minus the database's now (<= 0: due). `requested_age_ms` is how long ago it was requested, on
    the database clock. `by` is who asked: "user@host" for an operator, "failback" for the fail-back policy.
    `id` identifies the request (each request_switchover takes the next number): a holder passes it to
    ControlStore.handover / cancel_switchover as `request_id`, so they act on the request it read and on no later
    one (None: built by hand, not read from a store).
    """

    to: str | None
    due_in_ms: int
    by: str | None
    requested_age_ms: int
    id: int | None = None

    @property
    def due(self) -> bool:
        return self.due_in_ms <= 0


SEES_DISABLED, SEES_MAINTENANCE, SEES_FAILOVER_OFF = "disabled", "maintenance", "failover_off"


@dataclass(frozen=True)
class Control:
    """The operator's intent and the policy state stored beside the lease (schema v3). The defaults mean nothing
    is pending. Ages (`*_ms`) are on the database clock; None means off."""

    switchover: Switchover | None = None
    maintenance_ms: int | None = None  # how long maintenance mode has been on
    maintenance_by: str | None = None
    disabled_ms: int | None = None  # how long the cluster has been disabled
    disabled_by: str | None = None
    failover_off_ms: int | None = None  # how long automatic failover has been off (anti-flap tripped)
    failover_off_reason: str | None = None

    @property
    def maintenance(self) -> bool:
        return self.maintenance_ms is not None

    @property
    def disabled(self) -> bool:
        return self.disabled_ms is not None

    @property
    def failover_off(self) -> bool:
        return self.failover_off_ms is not None

    def sees(self) -> str:
        """What an agent acting on this state writes as its node row's `sees` (record_node): the states in force,
        comma-separated in a fixed order ("" when none). `fos maintenance --wait` reads it back with
        sees_states()."""
        states = ((SEES_DISABLED, self.disabled), (SEES_MAINTENANCE, self.maintenance))
        return ",".join(name for name, on in (*states, (SEES_FAILOVER_OFF, self.failover_off)) if on)


def sees_states(sees: str | None) -> frozenset[str] | None:
    """The states a node row's `sees` names; None when the agent never reported any (an older agent)."""
    if sees is None:
        return None
    return frozenset(s for s in sees.split(",") if s)


@dataclass(frozen=True)
class LeaseState:
    """One cluster's lease row as the database saw it at one instant.

    `remaining_ms` is expires_at minus the database's own now, computed inside the same statement that read the
    row, so no client clock is involved. It is None when the lease was never held (or the row is missing).
    `row_exists` is False when the cluster has no lease row at all: try_acquire then creates it first.
    `holder_instance` identifies the agent process that holds (or last held) the lease; a node resumes its own
    unexpired lease only from the same instance.
    """

    cluster: str
    holder: str | None
    epoch: int
    remaining_ms: int | None
    ttl_ms: int | None = None
    handover_to: str | None = None
    holder_instance: str | None = None
    row_exists: bool = True
    control: Control = Control()

    @classmethod
    def missing(cls, cluster: str) -> LeaseState:
        """The state of a cluster that has no lease row yet."""
        return cls(cluster, None, 0, None, row_exists=False)

    @property
    def held(self) -> bool:
        """True when some node holds an unexpired lease."""
        return self.holder is not None and self.remaining_ms is not None and self.remaining_ms > 0

    def held_by(self, node: str) -> bool:
        return self.held and self.holder == node

    @property
    def reserved_for(self) -> str | None:
        """The node a handover reserved the free lease for, while the reservation lasts (None: no reservation)."""
        if self.holder is None and self.handover_to is not None and (self.remaining_ms or 0) > 0:
            return self.handover_to
        return None

    def acquire_refusal(self, node: str, instance: str | None) -> str | None:
        """Why the acquire compare-and-set would refuse `node` (from agent process `instance`) in this state, or
        None when it would succeed (the epoch permitting). The same rule as the SQL statement
        (lease/statements.py), so a caller can skip a round trip that cannot succeed:
        - nobody acquires while the cluster is disabled;
        - during maintenance, or with automatic failover off, only the holder's node (re-)acquires, or after a
          release the node that released it (the release statement keeps it in handover_to then);
        - an expired (or never held) lease is free for everyone else;
        - a handover reservation is free only for its target until it ends;
        - an unexpired lease is resumed only by its own node and instance.
        """
        c = self.control
        if c.disabled:
            return f"the cluster is disabled (by {c.disabled_by or 'unknown'})"
        # the holder's node, or the node that released it (the release keeps it in handover_to then)
        own = self.holder == node or (self.holder is None and self.handover_to == node)
        if c.maintenance and not own:
            return f"maintenance mode is on (by {c.maintenance_by or 'unknown'}): nobody fails over"
        if c.failover_off and not own:
            return f"automatic failover is off ({c.failover_off_reason or 'flapping'}): run `fos enable`"
        if self.remaining_ms is None or self.remaining_ms <= 0:
            return None
        if self.holder is None:
            if self.handover_to is None or self.handover_to == node:
                return None
            return f"reserved for {self.handover_to} by a handover for another {self.remaining_ms} ms"
        if self.holder == node and self.holder_instance == instance:
            return None
        return f"held by {self.holder} for another {self.remaining_ms} ms"


@dataclass(frozen=True)
class AcquireResult:
    """Outcome of try_acquire. On success `epoch` is the new fencing token; on a miss, `seen` tells who holds
    the lease and for how long, so a standby can schedule its next attempt at the expiry."""

    acquired: bool
    epoch: int
    seen: LeaseState


class EventKind(enum.StrEnum):
    ACQUIRED = "acquired"  # the lease was free (never held, or released)
    TAKEOVER = "takeover"  # another node's lease had expired
    RESUMED = "resumed"  # the same node re-acquired its own lease (restart)
    RELEASED = "released"
    FENCED = "fenced"  # a holder dropped the common IP because it could not renew in time
    STEPPED_DOWN = "stepped_down"
    PROMOTED = "promoted"
    DEMOTED = "demoted"
    NOTE = "note"
    SWITCHOVER_REQUESTED = "switchover_requested"
    SWITCHOVER_CANCELLED = "switchover_cancelled"
    SWITCHOVER_STALE = "switchover_stale"  # found more than two heartbeats past its due time: dropped
    SWITCHOVER_DONE = "switchover_done"  # the target serves
    SWITCHOVER_FAILED = "switchover_failed"  # refused by the holder (target unknown, not alive, itself)
    HANDOVER = "handover"  # the holder released the lease, reserved for the target
    MAINTENANCE_ON = "maintenance_on"
    MAINTENANCE_OFF = "maintenance_off"
    MAINTENANCE_REMINDER = "maintenance_reminder"
    DISABLED = "disabled"
    ENABLED = "enabled"
    FLAPPING = "flapping"  # anti-flap tripped: automatic failover off
    IP_BOUND = "ip_bound"  # the new holder bound the common IP


@dataclass(frozen=True)
class Event:
    id: int
    cluster: str
    at: datetime
    node: str | None
    kind: str
    epoch: int | None
    detail: str | None


@dataclass(frozen=True)
class NodeRecord:
    cluster: str
    node: str
    role: str
    app_healthy: bool | None
    url: str | None
    agent_version: str | None
    last_seen_age_s: float | None = None
    instance: str | None = None  # the agent process that wrote the row last
    sees: str | None = None  # the control state the agent acts on: Control.sees() ("" none, "maintenance", ...)


# Event details written by the control statements, in one place so `fos history` can read them back.
def switchover_detail(to: str, due_in_ms: int, by: str) -> str:
    when = "at once" if due_in_ms <= 0 else f"due in {due_in_ms} ms"
    return f"to {to}, {when}, by {by}"


def by_detail(text: str, by: str) -> str:
    """`text` followed by who did it: the detail always ends in "by <who>"."""
    return f"{text}, by {by}" if text else f"by {by}"


def detail_by(detail: str | None) -> str | None:
    """Who did it, from a detail written by by_detail or switchover_detail (None if it names nobody)."""
    if not detail:
        return None
    head, sep, tail = detail.rpartition("by ")
    if not sep or (head and not head.endswith(", ")) or " " in tail.strip():
        return None
    return tail.strip() or None
