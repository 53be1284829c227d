"""The narrow interfaces the agent programs against, with the contract every implementation keeps.

Like Patroni's AbstractDCS or client-go's resourcelock.Interface: the decision logic (agent/roles.py) sees only
these, so it can be tested against lease.memory.MemoryLeaseStore and run against lease.store.SqlLeaseStore. This
module imports no driver: importing it (or lease.model) never loads pyodbc.

Common rules for every method:
- `timeout` is the call's deadline in seconds (None: the store's default). A call never blocks its caller past
  it; a call still inside the driver at the deadline is abandoned, and StoreUnavailable is raised.
- Failures are typed (lease.errors): StoreUnavailable (unreachable, deadline passed; worth retrying later),
  StoreAuthError, StoreConfigError (incl. UnsafeSchema), SchemaMissing, ProtocolViolation, InvalidName. A lost
  compare-and-set is a normal result, never an exception.
- Every time comparison is made on the database's clock; durations are milliseconds.
- Cluster and node names are validated (lease.names.check_name) before anything is sent.
"""

from __future__ import annotations

from typing import Protocol

from .model import AcquireResult, Event, LeaseState, NodeRecord


class LeaseStore(Protocol):
    """What the agent needs to hold a lease; nothing more."""

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState:
        """The cluster's lease as the database sees it now, with the remaining time on the database clock.

        A cluster without a row reads as free with epoch 0 and `row_exists=False`. Changes nothing.
        """
        ...

    async def try_acquire(
        self,
        cluster: str,
        node: str,
        ttl_ms: int,
        *,
        expected: LeaseState | None = None,
        instance: str | None = None,
        timeout: float | None = None,
    ) -> AcquireResult:
        """Take the lease in one atomic compare-and-set, for `ttl_ms` from the database's now.

        Succeeds only if the epoch is still the one in `expected` (or, without `expected`, the one just read)
        and the lease is free, expired by the database clock, or held by this node *and* this instance (a
        restarted process of the same node with another instance must wait for the expiry). On success the
        epoch is incremented (the new fencing token, returned in the result), the holder's instance is written,
        and an event is appended after the compare-and-set (an event may be lost; the lease change never is).
        A missing lease row is created first (as init-db does), whatever `expected` says. On a miss the
        result's `seen` tells who holds the lease and for how long.
        """
        ...

    async def renew(self, cluster: str, node: str, epoch: int, ttl_ms: int, *, timeout: float | None = None) -> bool:
        """Extend our unexpired lease of this epoch to the database's now + ttl_ms, in one compare-and-set.

        False means the lease is lost (expired, taken, released): the caller must fence at once. A renewal never
        revives an expired lease.
        """
        ...

    async def release(
        self, cluster: str, node: str, epoch: int, *, detail: str | None = None, timeout: float | None = None
    ) -> bool:
        """Give up our lease of this epoch now (expires_at = the database's now), in one compare-and-set.

        False means it was no longer ours. A RELEASED event is appended after the compare-and-set.
        """
        ...


class HistoryStore(Protocol):
    """Node rows and the event history: what operators and DBAs read. Never part of a safety decision."""

    async def record_node(
        self,
        cluster: str,
        node: str,
        role: str,
        app_healthy: bool | None,
        url: str | None,
        agent_version: str | None,
        *,
        instance: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Insert or update this node's row (role, app health, URL, version, instance), stamped with the
        database's now as last_seen."""
        ...

    async def record_event(
        self,
        cluster: str,
        node: str | None,
        kind: str,
        epoch: int | None,
        detail: str | None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Append one event to the history, stamped with the database's now."""
        ...

    async def list_events(
        self, cluster: str, *, limit: int = 20, since_id: int = 0, timeout: float | None = None
    ) -> list[Event]:
        """At most `limit` events of the cluster with id > since_id, newest first."""
        ...

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]:
        """Every node row of the cluster, ordered by name, with its age on the database clock."""
        ...
