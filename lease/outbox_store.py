"""SqlOutboxStore: the lease store plus the notification outbox (lease/outbox.py holds the schema and the rules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyodbc

from .names import check_name
from .odbc import OwnedConnection, is_duplicate_key
from .outbox import MAX_BODY, OutboxSql, outbox_statements
from .store import SqlLeaseStore


@dataclass(frozen=True)
class OutboxRow:
    """One message as the database holds it. `delivered`: the channels that already accepted it."""

    key: str
    kind: str
    body: str
    claimed_by: str | None
    attempts: int
    delivered: frozenset[str]
    sent: bool


def _row(r: Any) -> OutboxRow:
    key, kind, body, claimed_by, attempts, delivered, sent_at = r
    return OutboxRow(
        key=str(key),
        kind=str(kind),
        body=str(body or ""),
        claimed_by=claimed_by,
        attempts=int(attempts),
        delivered=frozenset(c for c in str(delivered or "").split(",") if c),
        sent=sent_at is not None,
    )


def _joined(channels: frozenset[str] | set[str]) -> str:
    return ",".join(sorted(channels))[:400]


class SqlOutboxStore(SqlLeaseStore):
    """The lease store plus the outbox. The notifier opens one of its own, so its calls never queue in front of a
    renewal. Keys are checked like names (1-64 characters of [A-Za-z0-9._-], first a letter or digit)."""

    _outbox: OutboxSql | None = None

    def _osql(self) -> OutboxSql:
        if self._outbox is None:
            self._outbox = outbox_statements(self.dialect, self.schema)
        return self._outbox

    async def offer(
        self, cluster: str, key: str, kind: str, body: str, node: str, *, timeout: float | None = None
    ) -> bool:
        """Insert the message claimed by `node`. True: this node owns it and must send it; False: a row with this
        key exists already (another node, or an earlier pass, has it), and nothing was changed. One round trip."""
        check_name("cluster", cluster)
        check_name("outbox key", key)
        check_name("node", node)

        async def op(conn: OwnedConnection) -> bool:
            # The SQL is fetched inside the call: the dialect is known only once a connection is open.
            try:
                await conn.execute(self._osql().offer, (cluster, key, kind[:32], body[:MAX_BODY], node))
            except pyodbc.Error as exc:
                if not is_duplicate_key(exc):
                    raise
                return False
            return True

        return await self._call(op, timeout)

    async def _exec_change(self, conn: OwnedConnection, which: str, params: tuple[Any, ...]) -> bool:
        rowcount, _ = await conn.execute(getattr(self._osql(), which), params)
        return bool(rowcount == 1)

    async def touch(self, cluster: str, key: str, node: str, *, timeout: float | None = None) -> bool:
        """Refresh this node's claim on an unsent message. False: it is no longer ours (taken over, or sent)."""
        return await self._call(lambda c: self._exec_change(c, "touch", (cluster, key, node)), timeout)

    async def record_delivery(
        self, cluster: str, key: str, node: str, delivered: frozenset[str], error: str | None, *, timeout: float | None
    ) -> bool:
        """Record the channels that accepted the message so far (and the last error), refreshing the claim."""
        params = (_joined(delivered), (error or "")[:400] or None, cluster, key, node)
        return await self._call(lambda c: self._exec_change(c, "delivered", params), timeout)

    async def mark_sent(
        self, cluster: str, key: str, node: str, delivered: frozenset[str], *, timeout: float | None = None
    ) -> bool:
        """Mark our message sent. False: it was not ours any more (a node that took it over sends the rest)."""
        params = (_joined(delivered), cluster, key, node)
        return await self._call(lambda c: self._exec_change(c, "sent", params), timeout)

    async def claim(self, cluster: str, key: str, node: str, older_ms: int, *, timeout: float | None = None) -> bool:
        """Take over an unsent message whose claim is at least `older_ms` old, in one compare-and-set."""
        check_name("node", node)
        params = (node, cluster, key, -int(older_ms))
        return await self._call(lambda c: self._exec_change(c, "claim", params), timeout)

    async def stale(
        self, cluster: str, older_ms: int, max_age_ms: int, *, timeout: float | None = None
    ) -> list[OutboxRow]:
        """Unsent messages created within `max_age_ms` whose claim is at least `older_ms` old, oldest first."""
        check_name("cluster", cluster)

        async def op(conn: OwnedConnection) -> list[OutboxRow]:
            _, rows = await conn.execute(self._osql().stale, (cluster, -int(older_ms), -int(max_age_ms)))
            return [_row(r) for r in rows]

        return await self._call(op, timeout)

    async def read_message(self, cluster: str, key: str, *, timeout: float | None = None) -> OutboxRow | None:
        """The message `key`, or None."""

        async def op(conn: OwnedConnection) -> OutboxRow | None:
            _, rows = await conn.execute(self._osql().read, (cluster, key))
            return _row(rows[0]) if rows else None

        return await self._call(op, timeout)

    async def purge_sent(self, keep_ms: int, *, timeout: float | None = None) -> int:
        """Delete messages sent more than `keep_ms` ago; return how many."""

        async def op(conn: OwnedConnection) -> int:
            rowcount, _ = await conn.execute(self._osql().purge, (-int(keep_ms),))
            return max(0, rowcount)

        return await self._call(op, timeout)
