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

from collections.abc import Collection
from typing import Protocol

from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord


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

        Succeeds only if the epoch is still the one in `expected` (or, without `expected`, the one just read), the
        control state allows it (never while the cluster is disabled; during maintenance or with automatic failover
        off only for the holder's node, or the node that released it), and the lease is free, expired by the
        database clock, or held by this node *and* this instance (a restarted process of the same node with another
        instance must wait for the expiry). A lease released by a handover is free only for its target
        (`handover_to`) until the reservation ends, then for everyone. LeaseState.acquire_refusal states the same
        rule. On success the epoch is incremented (the new fencing token, returned in the result), the holder's
        instance is written, handover_to is cleared, and an event is appended after the compare-and-set (an event
        may be lost; the lease change never is). A missing lease row is created first (as init-db does), whatever
        `expected` says. On a miss the result's `seen` tells who holds the lease and for how long.
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

        During maintenance or with automatic failover off the release keeps `node` as handover_to: nobody else
        may acquire then, but this node may take the lease back (any instance of it, e.g. after a restart).
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
        sees: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Insert or update this node's row (role, app health, URL, version, instance, and `sees`: the control
        state this agent acts on, Control.sees(); None writes NULL, "not reported"), stamped with the
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
        self,
        cluster: str,
        *,
        limit: int = 20,
        since_id: int = 0,
        since_ms: int | None = None,
        timeout: float | None = None,
    ) -> list[Event]:
        """At most `limit` events of the cluster with id > since_id and, with `since_ms`, stamped within the
        last since_ms milliseconds of the database clock; newest first. since_ms is at most ten years
        (lease.model.MAX_LOOKBACK_MS; ValueError beyond)."""
        ...

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]:
        """Every node row of the cluster, ordered by name, with its age on the database clock."""
        ...


class ControlStore(Protocol):
    """The operator's intent and the policy state on the cluster's lease row (schema v3): switchover requests,
    the handover, maintenance mode, disabling, anti-flap. The database is the only control plane: commands write
    intent here, agents read it with LeaseStore.read (LeaseState.control) and act.

    Every change is one atomic UPDATE of the lease row judged by its rowcount (True: this call changed it;
    False: the condition did not hold, nothing changed), then a best-effort event (an event may be lost, the
    change never). `by` is who asked ("user@host" for an operator, a node name or "failback" for an agent); it
    is stored as given (at most 200 characters) and shown to operators.
    """

    async def handover(
        self,
        cluster: str,
        node: str,
        epoch: int,
        to: str,
        reserve_ms: int,
        *,
        detail: str | None = None,
        request_id: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """The holder gives the lease to `to`, in one compare-and-set that requires: `node` still holds `epoch`
        unexpired (it has let go of the IP and the app before calling); a switchover request to `to` is pending
        (with `request_id`, Switchover.id as the holder read it: that very request, not a later one); and the
        cluster is neither disabled, in maintenance, nor with automatic failover off (the target could not
        acquire then). It sets holder and instance NULL, handover_to = to, expires_at = now + reserve_ms capped at
        the lease's ttl_ms (the reservation: only `to` may acquire before it ends, everyone after), renewed_at =
        now, transitions + 1, and clears the pending request. Event HANDOVER.

        False changes nothing: the request was cancelled or replaced, the control state changed, or the lease
        was no longer ours. A caller whose lease is still unexpired still holds it: it may go on renewing, or
        resume it with try_acquire from the same instance, and serve again."""
        ...

    async def request_switchover(
        self, cluster: str, to: str, due_in_ms: int, by: str, *, timeout: float | None = None
    ) -> bool:
        """Record a switchover to `to`, due at the database's now + due_in_ms (0: at once; |due_in_ms| < 2**31),
        only if none is pending and the cluster is neither disabled, in maintenance, nor with automatic failover
        off (the target could not acquire the handed-over lease then). Event SWITCHOVER_REQUESTED. False: one of
        those held (the caller reads the row to say which). The target is the caller's to check."""
        ...

    async def cancel_switchover(
        self,
        cluster: str,
        by: str,
        *,
        kind: EventKind = EventKind.SWITCHOVER_CANCELLED,
        detail: str | None = None,
        request_id: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Remove the pending switchover request (with `request_id`, Switchover.id: only that request; a later
        one stays). Event `kind` (SWITCHOVER_CANCELLED by an operator; the holder uses SWITCHOVER_STALE or
        SWITCHOVER_FAILED with its reason as `detail`, and should pass the request_id it read). False: none (or
        not that one) was pending."""
        ...

    async def set_maintenance(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        """Turn maintenance mode on (stamped with the database's now) or off. Event MAINTENANCE_ON / _OFF.
        False: it already was in that state, or (on) no node holds an unexpired lease, or a switchover is pending
        (maintenance keeps everyone but the holder's node out of the lease: nobody would serve)."""
        ...

    async def set_disabled(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        """Disable the cluster (nobody acquires; the holder lets go) or enable it. Disabling also clears a pending
        switchover in the same statement (event SWITCHOVER_CANCELLED after DISABLED); enabling also clears an
        anti-flap trip (failover_off). Event DISABLED / ENABLED. False: nothing changed."""
        ...

    async def set_failover_off(self, cluster: str, node: str, reason: str, *, timeout: float | None = None) -> bool:
        """Turn automatic failover off (anti-flap tripped), recording `reason` (at most 400 characters), only if
        it is not off already. Event FLAPPING by `node`. False: it already was off."""
        ...

    async def count_events(
        self, cluster: str, kinds: Collection[str], within_ms: int, *, timeout: float | None = None
    ) -> int:
        """How many events of these kinds the cluster recorded in the last within_ms milliseconds of the
        database clock (anti-flap counting; at most ten years, ValueError beyond). Changes nothing."""
        ...
