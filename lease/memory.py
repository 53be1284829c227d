"""An in-memory LeaseStore and HistoryStore with the same compare-and-set rules as the SQL statements, on an
injected clock that plays the database clock. For fast unit tests of the agent; never a substitute for the
real-database tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import StoreUnavailable
from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord
from .names import check_name


@dataclass
class _Row:
    holder: str | None = None
    epoch: int = 0
    expires_at: float = 0.0
    ttl_ms: int | None = None
    instance: str | None = None


class MemoryLeaseStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.events: list[Event] = []
        self.nodes: dict[tuple[str, str], NodeRecord] = {}
        self.available = True  # set False to simulate an unreachable database
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if not self.available:
            raise StoreUnavailable("database unreachable (simulated)")

    def _state(self, cluster: str) -> LeaseState:
        row = self.rows.get(cluster)
        if row is None:
            return LeaseState.missing(cluster)
        return LeaseState(
            cluster,
            row.holder,
            row.epoch,
            int((row.expires_at - self.clock()) * 1000),
            row.ttl_ms,
            holder_instance=row.instance,
        )

    def _event(self, cluster: str, node: str | None, kind: str, epoch: int | None, detail: str | None) -> None:
        self.events.append(Event(len(self.events) + 1, cluster, datetime.now(UTC), node, kind, epoch, detail))

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
        check_name("cluster", cluster)
        check_name("node", node)
        row = self.rows.setdefault(cluster, _Row())
        seen = expected if expected is not None else self._state(cluster)
        now = self.clock()
        own = row.holder == node and row.instance == instance  # same rule as lease.store.may_resume
        free = row.holder is None or row.expires_at <= now or own
        if row.epoch != seen.epoch or not free:
            return AcquireResult(False, row.epoch, self._state(cluster))
        kind = EventKind.ACQUIRED if row.holder is None else (EventKind.RESUMED if own else EventKind.TAKEOVER)
        row.holder, row.epoch, row.expires_at, row.ttl_ms = node, row.epoch + 1, now + ttl_ms / 1000, ttl_ms
        row.instance = instance
        self._event(cluster, node, kind, row.epoch, None)
        return AcquireResult(True, row.epoch, seen)

    async def renew(self, cluster: str, node: str, epoch: int, ttl_ms: int, *, timeout: float | None = None) -> bool:
        self._check()
        row = self.rows.get(cluster)
        now = self.clock()
        if row is None or row.holder != node or row.epoch != epoch or row.expires_at <= now:
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
        row.holder, row.instance, row.expires_at = None, None, self.clock()
        self._event(cluster, node, EventKind.RELEASED, epoch, detail)
        return True

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
        self._check()
        self.nodes[(cluster, node)] = NodeRecord(cluster, node, role, app_healthy, url, agent_version, 0.0, instance)

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
        self, cluster: str, *, limit: int = 20, since_id: int = 0, timeout: float | None = None
    ) -> list[Event]:
        self._check()
        found = [e for e in self.events if e.cluster == cluster and e.id > since_id]
        return list(reversed(found))[:limit]

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]:
        self._check()
        return [n for (c, _), n in sorted(self.nodes.items()) if c == cluster]

    async def close(self) -> None:
        return None
