"""Values the lease store returns. Durations are in milliseconds measured on the database clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


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
