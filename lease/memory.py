"""An in-memory LeaseStore, HistoryStore and ControlStore with the same compare-and-set rules as the SQL
statements, on an injected clock that plays the database clock. For fast unit tests of the agent; never a
substitute for the real-database tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .errors import StoreUnavailable
from .model import (
    MAX_MS,
    AcquireResult,
    Control,
    Event,
    EventKind,
    LeaseState,
    NodeRecord,
    Switchover,
    by_detail,
    check_lookback,
    check_ms,
    switchover_detail,
)
from .names import check_name
from .statements import BY_MAX, REASON_MAX


@dataclass
class _Row:
    holder: str | None = None
    epoch: int = 0
    expires_at: float | None = None
    ttl_ms: int | None = None
    instance: str | None = None
    handover_to: str | None = None
    switchover_to: str | None = None
    switchover_due_at: float | None = None
    switchover_by: str | None = None
    switchover_requested_at: float | None = None
    switchover_id: int | None = None  # the last request's number (kept when it is cleared)
    maintenance_since: float | None = None
    maintenance_by: str | None = None
    disabled_since: float | None = None
    disabled_by: str | None = None
    failover_off_since: float | None = None
    failover_off_reason: str | None = None


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class MemoryLeaseStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.events: list[Event] = []
        self.event_times: list[float] = []  # each event's time on `clock`, parallel to `events`
        self.nodes: dict[tuple[str, str], NodeRecord] = {}
        self._seen_at: dict[tuple[str, str], float] = {}  # each node row's last_seen on `clock`
        self.available = True  # set False to simulate an unreachable database
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if not self.available:
            raise StoreUnavailable("database unreachable (simulated)")

    def _control(self, row: _Row, now: float) -> Control:
        switchover = None
        if row.switchover_requested_at is not None:
            switchover = Switchover(
                row.switchover_to,
                _ms((now if row.switchover_due_at is None else row.switchover_due_at) - now),
                row.switchover_by,
                _ms(now - row.switchover_requested_at),
                row.switchover_id,
            )
        return Control(
            switchover=switchover,
            maintenance_ms=None if row.maintenance_since is None else _ms(now - row.maintenance_since),
            maintenance_by=row.maintenance_by,
            disabled_ms=None if row.disabled_since is None else _ms(now - row.disabled_since),
            disabled_by=row.disabled_by,
            failover_off_ms=None if row.failover_off_since is None else _ms(now - row.failover_off_since),
            failover_off_reason=row.failover_off_reason,
        )

    def _state(self, cluster: str) -> LeaseState:
        row = self.rows.get(cluster)
        if row is None:
            return LeaseState.missing(cluster)
        now = self.clock()
        return LeaseState(
            cluster,
            row.holder,
            row.epoch,
            None if row.expires_at is None else _ms(row.expires_at - now),
            row.ttl_ms,
            handover_to=row.handover_to,
            holder_instance=row.instance,
            control=self._control(row, now),
        )

    def _event(self, cluster: str, node: str | None, kind: str, epoch: int | None, detail: str | None) -> None:
        self.events.append(Event(len(self.events) + 1, cluster, datetime.now(UTC), node, kind, epoch, detail))
        self.event_times.append(self.clock())

    def _row(self, cluster: str) -> _Row:
        return self.rows.setdefault(check_name("cluster", cluster), _Row())

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState:
        self._check()
        return self._state(check_name("cluster", cluster))

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
        self._check()
        check_name("node", node)
        row = self._row(cluster)
        seen = expected if expected is not None else self._state(cluster)
        if seen.acquire_refusal(node, instance) is not None:  # as SqlLeaseStore: no round trip that cannot win
            return AcquireResult(False, seen.epoch, seen)
        current = self._state(cluster)
        if row.epoch != seen.epoch or current.acquire_refusal(node, instance) is not None:
            return AcquireResult(False, row.epoch, current)
        own = row.holder == node and row.instance == instance  # same rule as lease.store.may_resume
        kind = EventKind.ACQUIRED if row.holder is None else (EventKind.RESUMED if own else EventKind.TAKEOVER)
        now = self.clock()
        row.holder, row.epoch, row.expires_at, row.ttl_ms = node, row.epoch + 1, now + ttl_ms / 1000, ttl_ms
        row.instance, row.handover_to = instance, None
        self._event(cluster, node, kind, row.epoch, None)
        return AcquireResult(True, row.epoch, seen)

    async def renew(self, cluster: str, node: str, epoch: int, ttl_ms: int, *, timeout: float | None = None) -> bool:
        self._check()
        row = self.rows.get(cluster)
        now = self.clock()
        if row is None or row.holder != node or row.epoch != epoch or row.expires_at is None or row.expires_at <= now:
            return False
        row.expires_at, row.ttl_ms = now + ttl_ms / 1000, ttl_ms
        return True

    async def release(
        self, cluster: str, node: str, epoch: int, *, detail: str | None = None, timeout: float | None = None
    ) -> bool:
        self._check()
        row = self.rows.get(cluster)
        if row is None or row.holder != node or row.epoch != epoch:
            return False
        if row.maintenance_since is not None or row.failover_off_since is not None:
            row.handover_to = node  # as the SQL release: the node that released may take it back, nobody else
        row.holder, row.instance, row.expires_at = None, None, self.clock()
        self._event(cluster, node, EventKind.RELEASED, epoch, detail)
        return True

    # ---- control (ControlStore) ----------------------------------------------------------------------------

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
        self._check()
        check_name("node", node)
        check_name("node", to)
        check_ms(reserve_ms, "reserve_ms", low=1)
        row = self.rows.get(cluster)
        now = self.clock()
        if row is None or row.holder != node or row.epoch != epoch or row.expires_at is None or row.expires_at <= now:
            return False
        if not self._requested(row, request_id) or row.switchover_to != to or self._gated(row):
            return False
        reserve = min(reserve_ms, row.ttl_ms) if row.ttl_ms is not None else reserve_ms
        row.holder, row.instance, row.handover_to, row.expires_at = None, None, to, now + reserve / 1000
        self._clear_switchover(row)
        text = detail or f"to {to}, reserved for up to {reserve_ms} ms"
        self._event(cluster, node, EventKind.HANDOVER, epoch, text)
        return True

    @staticmethod
    def _requested(row: _Row, request_id: int | None) -> bool:
        """A request is pending (with `request_id`: that one)."""
        pending = row.switchover_requested_at is not None
        return pending and (request_id is None or row.switchover_id == request_id)

    @staticmethod
    def _gated(row: _Row) -> bool:
        return row.disabled_since is not None or row.maintenance_since is not None or row.failover_off_since is not None

    @staticmethod
    def _clear_switchover(row: _Row) -> None:
        row.switchover_to = row.switchover_by = None
        row.switchover_due_at = row.switchover_requested_at = None

    async def request_switchover(
        self, cluster: str, to: str, due_in_ms: int, by: str, *, timeout: float | None = None
    ) -> bool:
        self._check()
        check_name("node", to)
        check_ms(due_in_ms, "due_in_ms", low=-MAX_MS)
        by = by[:BY_MAX]
        row = self._row(cluster)
        pending = row.switchover_requested_at is not None
        gated = row.disabled_since is not None or row.maintenance_since is not None
        if pending or gated or row.failover_off_since is not None:
            return False
        now = self.clock()
        row.switchover_to, row.switchover_by = to, by
        row.switchover_due_at, row.switchover_requested_at = now + due_in_ms / 1000, now
        row.switchover_id = (row.switchover_id or 0) + 1
        self._event(cluster, None, EventKind.SWITCHOVER_REQUESTED, None, switchover_detail(to, due_in_ms, by))
        return True

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
        self._check()
        by = by[:BY_MAX]
        row = self.rows.get(check_name("cluster", cluster))
        if row is None or not self._requested(row, request_id):
            return False
        to = row.switchover_to
        self._clear_switchover(row)
        self._event(cluster, None, kind, None, by_detail(detail or f"switchover to {to}", by))
        return True

    async def set_maintenance(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        self._check()
        by = by[:BY_MAX]
        row = self.rows.get(check_name("cluster", cluster))
        if row is None or (row.maintenance_since is not None) == on:  # as SQL: no row, no change
            return False
        if on and (row.switchover_requested_at is not None or not self._state(cluster).held):
            return False
        row.maintenance_since, row.maintenance_by = (self.clock(), by) if on else (None, None)
        kind = EventKind.MAINTENANCE_ON if on else EventKind.MAINTENANCE_OFF
        self._event(cluster, None, kind, None, by_detail("", by))
        return True

    async def set_disabled(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        self._check()
        by = by[:BY_MAX]
        if not on and check_name("cluster", cluster) not in self.rows:
            return False  # as the SQL enable: no row, no change (disable creates it, as SQL does)
        row = self._row(cluster)
        if on:
            if row.disabled_since is not None:
                return False
            row.disabled_since, row.disabled_by = self.clock(), by
            pending = row.switchover_to if row.switchover_requested_at is not None else None
            self._clear_switchover(row)
            self._event(cluster, None, EventKind.DISABLED, None, by_detail("", by))
            if pending is not None:
                text = by_detail(f"switchover to {pending}: the cluster was disabled", by)
                self._event(cluster, None, EventKind.SWITCHOVER_CANCELLED, None, text)
            return True
        if row.disabled_since is None and row.failover_off_since is None:
            return False
        row.disabled_since = row.disabled_by = row.failover_off_since = row.failover_off_reason = None
        self._event(cluster, None, EventKind.ENABLED, None, by_detail("", by))
        return True

    async def set_failover_off(self, cluster: str, node: str, reason: str, *, timeout: float | None = None) -> bool:
        self._check()
        check_name("node", node)
        row = self.rows.get(check_name("cluster", cluster))
        if row is None or row.failover_off_since is not None:  # as the SQL statement: no row, no change
            return False
        row.failover_off_since, row.failover_off_reason = self.clock(), reason[:REASON_MAX]
        self._event(cluster, node, EventKind.FLAPPING, None, reason)
        return True

    async def count_events(
        self, cluster: str, kinds: Collection[str], within_ms: int, *, timeout: float | None = None
    ) -> int:
        self._check()
        since = self.clock() - check_lookback(within_ms, "within_ms") / 1000
        wanted = {str(k) for k in kinds}
        return sum(
            1
            for e, t in zip(self.events, self.event_times, strict=True)
            if e.cluster == cluster and e.kind in wanted and t > since
        )

    # ---- nodes and events (HistoryStore) ---------------------------------------------------------------------

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
        self._check()
        self.nodes[(cluster, node)] = NodeRecord(
            cluster, node, role, app_healthy, url, agent_version, 0.0, instance, sees
        )
        self._seen_at[(cluster, node)] = self.clock()

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
        self._check()
        self._event(cluster, node, kind, epoch, detail)

    async def list_events(
        self,
        cluster: str,
        *,
        limit: int = 20,
        since_id: int = 0,
        since_ms: int | None = None,
        timeout: float | None = None,
    ) -> list[Event]:
        self._check()
        since = None if since_ms is None else self.clock() - check_lookback(since_ms, "since_ms") / 1000
        found = [
            e
            for e, t in zip(self.events, self.event_times, strict=True)
            if e.cluster == cluster and e.id > since_id and (since is None or t > since)
        ]
        return list(reversed(found))[:limit]

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]:
        self._check()
        now = self.clock()
        return [
            replace(n, last_seen_age_s=now - self._seen_at.get(key, now))
            for key, n in sorted(self.nodes.items())
            if key[0] == cluster
        ]

    async def close(self) -> None:
        return None
