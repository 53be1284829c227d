"""The ControlStore side of SqlLeaseStore (lease/interface.py): switchover requests, the handover, maintenance
mode, disabling and anti-flap, all on the cluster's lease row (schema v3).

Every change is one UPDATE in autocommit judged by its rowcount (statements.py), then the event INSERT (best
effort within the call's deadline). `by` and reasons are display text: cut to their column's length, never
interpreted.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .model import MAX_MS, EventKind, by_detail, check_lookback, check_ms, switchover_detail
from .names import check_name
from .odbc import OwnedConnection
from .rows import LeaseRows, _judge
from .statements import BY_MAX, REASON_MAX, count_events_sql

__all__ = ["MAX_MS", "SqlControl"]


def _request_id(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"request_id must be a positive integer (Switchover.id), not {value!r}")
    return value


class SqlControl(LeaseRows):
    """ControlStore over ODBC. Each operation: one UPDATE (plus the row's INSERT when a command finds no row),
    then one event INSERT."""

    async def _change(
        self,
        conn: OwnedConnection,
        cluster: str,
        statement: str,
        params: tuple[Any, ...],
        event: tuple[str | None, str, int | None, str | None],
        *,
        create: bool = False,
    ) -> bool:
        """Run one compare-and-set UPDATE of the lease row (the Statements field named `statement`); on success
        append `event` (node, kind, epoch, detail). With `create`, a cluster without a row gets one (as init-db
        would) and the UPDATE one more try."""
        sql = getattr(self.sql, statement)
        rowcount, _ = await conn.execute(sql, params)
        changed = _judge(rowcount, "the lease UPDATE")
        if not changed and create:
            await self._insert_if_missing(conn, cluster)
            rowcount, _ = await conn.execute(sql, params)
            changed = _judge(rowcount, "the lease UPDATE")
        if changed:
            node, kind, epoch, detail = event
            await self._event_after_change(conn, (cluster, node, kind, epoch, detail))
        return changed

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
        """Release our unexpired lease of `epoch` on the pending request to `to` (that request, with
        `request_id`), reserved for `to` until now + reserve_ms (capped at the lease's ttl). Two round trips."""
        check_name("cluster", cluster)
        check_name("node", node)
        check_name("node", to)
        check_ms(reserve_ms, "reserve_ms", low=1)
        text = detail or f"to {to}, reserved for up to {reserve_ms} ms"
        params: tuple[Any, ...] = (to, reserve_ms, reserve_ms, cluster, node, epoch, to)
        statement = "handover"
        if request_id is not None:
            statement, params = "handover_request", (*params, _request_id(request_id))
        event = (node, str(EventKind.HANDOVER), epoch, text)
        return await self._call(lambda c: self._change(c, cluster, statement, params, event), timeout)

    async def request_switchover(
        self, cluster: str, to: str, due_in_ms: int, by: str, *, timeout: float | None = None
    ) -> bool:
        """Record a switchover request if none is pending and the cluster is not disabled, in maintenance or with
        failover off. Two round trips (three when the cluster had no row)."""
        check_name("cluster", cluster)
        check_name("node", to)
        check_ms(due_in_ms, "due_in_ms", low=-MAX_MS)  # negative: already overdue (the holder then drops it as stale)
        by = by[:BY_MAX]
        params = (to, due_in_ms, by, cluster)
        event = (None, str(EventKind.SWITCHOVER_REQUESTED), None, switchover_detail(to, due_in_ms, by))
        return await self._call(
            lambda c: self._change(c, cluster, "request_switchover", params, event, create=True), timeout
        )

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
        """Clear the pending request (with `request_id`: only that one). Three round trips: a read (for the
        event's detail), the UPDATE, the event."""
        check_name("cluster", cluster)
        by = by[:BY_MAX]
        statement = "cancel_switchover" if request_id is None else "cancel_switchover_request"
        params: tuple[Any, ...] = (cluster,) if request_id is None else (cluster, _request_id(request_id))

        async def op(conn: OwnedConnection) -> bool:
            pending = (await self._read(conn, cluster)).control.switchover
            text = by_detail(detail or f"switchover to {pending.to if pending else 'nobody'}", by)
            event = (None, str(kind), None, text)
            return await self._change(conn, cluster, statement, params, event)

        return await self._call(op, timeout)

    async def set_maintenance(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        """Maintenance on (stamped now; only on a held, unexpired lease and not during a switchover) or off. Two
        round trips."""
        check_name("cluster", cluster)
        by = by[:BY_MAX]
        kind = EventKind.MAINTENANCE_ON if on else EventKind.MAINTENANCE_OFF
        sql, params = ("maintenance_on", (by, cluster)) if on else ("maintenance_off", (cluster,))
        event = (None, str(kind), None, by_detail("", by))
        return await self._call(lambda c: self._change(c, cluster, sql, params, event), timeout)

    async def set_disabled(self, cluster: str, on: bool, by: str, *, timeout: float | None = None) -> bool:
        """Disable (which also clears a pending switchover, in the same statement), or enable (which also clears
        failover_off). Disable: a read (only for the events), the UPDATE, its event and a SWITCHOVER_CANCELLED
        event when a request was pending; enable: two round trips."""
        check_name("cluster", cluster)
        by = by[:BY_MAX]
        if not on:
            event = (None, str(EventKind.ENABLED), None, by_detail("", by))
            return await self._call(lambda c: self._change(c, cluster, "enable", (cluster,), event), timeout)

        async def op(conn: OwnedConnection) -> bool:
            pending = (await self._read(conn, cluster)).control.switchover
            event = (None, str(EventKind.DISABLED), None, by_detail("", by))
            changed = await self._change(conn, cluster, "disable", (by, cluster), event, create=True)
            if changed and pending is not None:
                text = by_detail(f"switchover to {pending.to}: the cluster was disabled", by)
                await self._event_after_change(conn, (cluster, None, str(EventKind.SWITCHOVER_CANCELLED), None, text))
            return changed

        return await self._call(op, timeout)

    async def set_failover_off(self, cluster: str, node: str, reason: str, *, timeout: float | None = None) -> bool:
        """Anti-flap: automatic failover off with `reason`, if not off already. Two round trips."""
        check_name("cluster", cluster)
        check_name("node", node)
        reason = reason[:REASON_MAX]
        event = (node, str(EventKind.FLAPPING), None, reason)
        return await self._call(lambda c: self._change(c, cluster, "failover_off", (reason, cluster), event), timeout)

    async def count_events(
        self, cluster: str, kinds: Collection[str], within_ms: int, *, timeout: float | None = None
    ) -> int:
        """Events of `kinds` within the last within_ms ms (at most ten years) of the database clock (whole seconds
        on SQL Server).
        One round trip; none when `kinds` is empty."""
        check_name("cluster", cluster)
        check_lookback(within_ms, "within_ms")
        wanted = sorted({str(k) for k in kinds})
        if not wanted:
            return 0

        async def op(conn: OwnedConnection) -> int:
            sql = count_events_sql(self.dialect, self.schema, len(wanted))
            _, rows = await conn.execute(sql, (cluster, within_ms, *wanted))
            return int(rows[0][0]) if rows else 0

        return await self._call(op, timeout)
