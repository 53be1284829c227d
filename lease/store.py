"""The lease store over ODBC for PostgreSQL, MariaDB/MySQL, SQLite and SQL Server: the LeaseStore and
HistoryStore interfaces (lease/interface.py) plus the DBA-facing status row, preflight and init-db.

Every call takes a deadline (`timeout`, seconds); see lease/calls.py for connections and retries. Every lease
change is one compare-and-set UPDATE in autocommit: no transaction is ever open across round trips, so a client
that dies mid-way cannot leave the lease row locked. The event row is written after the compare-and-set, in
autocommit too; an event may be lost, a lease change never half-done.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pyodbc
import structlog

from .calls import OdbcCalls, call_deadline
from .errors import ProtocolViolation, SchemaMissing, StoreConfigError, UnsafeSchema
from .interface import HistoryStore, LeaseStore
from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord
from .names import check_name
from .odbc import OwnedConnection, classify, is_duplicate_key
from .schema import SCHEMA_VERSION, migrations, record_version_sql
from .statements import STATUS_COLUMNS, build
from .upgrade import retype_mssql_keys

__all__ = ["HistoryStore", "LeaseStore", "SqlLeaseStore"]

log = structlog.get_logger("fos.lease")

MSSQL_MIN_MAJOR = 13  # SQL Server 2016: DATEDIFF_BIG, DROP VIEW IF EXISTS
_AZURE_EDITIONS = (5, 8)  # Azure SQL Database, Azure SQL Managed Instance: report 12.x, support all of it


def _judge(rowcount: int, what: str) -> bool:
    """A compare-and-set succeeded if exactly one row changed; anything but 0 or 1 is a protocol error."""
    if rowcount == 1:
        return True
    if rowcount == 0:
        return False
    raise ProtocolViolation(
        f"{what} reported {rowcount} rows, so fos cannot judge its compare-and-set: turn SET NOCOUNT off for the "
        "fos login (no 'user options' or logon trigger setting it) and drop any trigger on fos_lease"
    )


def _as_bool(value: Any) -> bool | None:
    """Drivers return booleans as bool, int or text ('1'/'0' from psqlODBC's BoolsAsChar)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "f", "false", "n", "no")
    return bool(value)


def _as_number(value: Any) -> float | int | None:
    if value is None or isinstance(value, int | float):
        return value
    return float(value)


def _as_datetime(value: Any) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _check_instance(instance: str | None) -> str | None:
    # agent/statedir.py's ids are "<host>:<boot>:<token>": ':' is allowed here besides the name characters.
    return None if instance is None else check_name("instance", instance.replace(":", ".")) and instance


def may_resume(seen: LeaseState, node: str, instance: str | None) -> bool:
    """A node may take its own unexpired lease again only from the same agent process (instance); a row written
    without an instance (an older agent) matches only a caller without one."""
    return seen.holder == node and seen.holder_instance == instance


class SqlLeaseStore(OdbcCalls):
    """LeaseStore and HistoryStore over ODBC. Round trips are stated on each operation.

    Constructor: `dsn` (ODBC connection string), `dialect` (detected from the connection when None), `schema`
    (qualifies every object; default dbo on mssql, public on postgresql, none on mysql/sqlite), `call_timeout`
    (default deadline, seconds; also bounds server-side lock waits), `max_idle` connections kept, `max_connections`
    concurrent calls, `max_threads` live connection threads including abandoned ones (default
    max(8, 2 * max_connections)); a call beyond that fails at once with StoreUnavailable.
    """

    # ---- the lease -----------------------------------------------------------------------------------------

    @staticmethod
    def _state(cluster: str, row: Any | None) -> LeaseState:
        if row is None:
            return LeaseState.missing(cluster)
        holder, epoch, remaining, ttl_ms, handover, instance = row
        return LeaseState(
            cluster=cluster,
            holder=holder,
            epoch=int(epoch),
            remaining_ms=None if remaining is None else int(remaining),
            ttl_ms=None if ttl_ms is None else int(ttl_ms),
            handover_to=handover,
            holder_instance=instance,
        )

    async def _read(self, conn: OwnedConnection, cluster: str) -> LeaseState:
        _, rows = await conn.execute(self.sql.read, (cluster,))
        return self._state(cluster, rows[0] if rows else None)

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState:
        """The lease row with its remaining time on the database clock. One round trip."""
        check_name("cluster", cluster)
        return await self._call(lambda c: self._read(c, cluster), timeout)

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
        """Take the lease if it is free, expired by the database clock, or this instance's own; bump the epoch.

        Round trips: one read (skipped when the caller passes the state it read as `expected`), one insert when
        the cluster has no row yet, the compare-and-set UPDATE (autocommit), then the event INSERT (autocommit,
        best effort within the deadline). On a miss, one more read returns who holds it.
        """
        check_name("cluster", cluster)
        check_name("node", node)
        _check_instance(instance)
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be positive")

        async def op(conn: OwnedConnection) -> AcquireResult:
            seen = expected if expected is not None else await self._read(conn, cluster)
            if not seen.row_exists:
                await self._insert_if_missing(conn, cluster)
            if seen.held and not may_resume(seen, node, instance):
                return AcquireResult(False, seen.epoch, seen)
            if not await self._acquire_cas(conn, cluster, node, ttl_ms, instance, seen.epoch):
                now = await self._read(conn, cluster)
                if now.row_exists or seen.epoch != 0:
                    return AcquireResult(False, now.epoch, now)
                # The caller's state claimed a row that is not there: create it as init-db does, and try once more.
                await self._insert_if_missing(conn, cluster)
                seen = LeaseState.missing(cluster)
                if not await self._acquire_cas(conn, cluster, node, ttl_ms, instance, 0):
                    now = await self._read(conn, cluster)
                    return AcquireResult(False, now.epoch, now)
            kind, detail = self._acquire_event(seen, node, instance)
            await self._event_after_change(conn, (cluster, node, str(kind), seen.epoch + 1, detail))
            return AcquireResult(True, seen.epoch + 1, seen)

        return await self._call(op, timeout)

    async def _acquire_cas(
        self, conn: OwnedConnection, cluster: str, node: str, ttl_ms: int, instance: str | None, epoch: int
    ) -> bool:
        params: tuple[Any, ...]
        if instance is None:
            sql, params = self.sql.acquire_without_instance, (node, node, None, ttl_ms, ttl_ms, cluster, epoch, node)
        else:
            sql = self.sql.acquire
            params = (node, node, instance, ttl_ms, ttl_ms, cluster, epoch, node, instance)
        rowcount, _ = await conn.execute(sql, params)
        return _judge(rowcount, "the lease UPDATE")

    @staticmethod
    def _acquire_event(seen: LeaseState, node: str, instance: str | None) -> tuple[EventKind, str]:
        if seen.holder is None:
            return EventKind.ACQUIRED, "the lease was free"
        if may_resume(seen, node, instance):
            return EventKind.RESUMED, f"re-acquired own lease of epoch {seen.epoch}"
        return (
            EventKind.TAKEOVER,
            f"{seen.holder} (epoch {seen.epoch}) expired {-(seen.remaining_ms or 0)} ms before the read",
        )

    async def _event_after_change(self, conn: OwnedConnection, params: tuple[Any, ...]) -> None:
        """Append the event of a lease change that has already happened; never fail the change for it."""
        left = call_deadline.get() - self._clock() - 0.02
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                await conn.execute(self.sql.insert_event, params)
        except (TimeoutError, pyodbc.Error) as exc:
            conn.broken = True  # its outcome is unknown; the connection is not reused
            log.warning("lease_event_lost", cluster=params[0], node=params[1], kind=params[2], error=repr(exc))

    async def _insert_if_missing(self, conn: OwnedConnection, cluster: str) -> None:
        sql = self.sql.insert_if_missing
        try:
            await conn.execute(sql, (cluster,) * sql.count("?"))
        except pyodbc.Error as exc:
            if not is_duplicate_key(exc):  # another node inserted it first: fine
                raise

    async def ensure_cluster(self, cluster: str, *, timeout: float | None = None) -> None:
        """Create the cluster's lease row (free, epoch 0) if it is missing. One round trip."""
        check_name("cluster", cluster)
        await self._call(lambda c: self._insert_if_missing(c, cluster), timeout)

    async def renew(self, cluster: str, node: str, epoch: int, ttl_ms: int, *, timeout: float | None = None) -> bool:
        """Extend our unexpired lease to the database's now + ttl. One round trip; False means it is lost."""
        check_name("cluster", cluster)
        check_name("node", node)

        async def op(conn: OwnedConnection) -> bool:
            rowcount, _ = await conn.execute(self.sql.renew, (ttl_ms, ttl_ms, cluster, node, epoch))
            return _judge(rowcount, "the renewal UPDATE")

        return await self._call(op, timeout)

    async def release(
        self, cluster: str, node: str, epoch: int, *, detail: str | None = None, timeout: float | None = None
    ) -> bool:
        """Give the lease up now (expires_at = now) if we still hold this epoch. The compare-and-set UPDATE
        (autocommit), then the event INSERT (best effort)."""
        check_name("cluster", cluster)
        check_name("node", node)

        async def op(conn: OwnedConnection) -> bool:
            rowcount, _ = await conn.execute(self.sql.release, (cluster, node, epoch))
            if not _judge(rowcount, "the release UPDATE"):
                return False
            await self._event_after_change(conn, (cluster, node, str(EventKind.RELEASED), epoch, detail))
            return True

        return await self._call(op, timeout)

    async def preflight(self, cluster: str, *, timeout: float | None = None) -> None:
        """What `fos run` checks before it competes: the schema version (SchemaMissing: run fos init-db), no
        enabled trigger on fos_lease (UnsafeSchema), and the cluster's lease row (inserted if missing; never any
        DDL). Three round trips."""
        check_name("cluster", cluster)

        async def op(conn: OwnedConnection) -> None:
            await self._check_schema_version(conn)
            await self._refuse_triggers(conn)
            await self._insert_if_missing(conn, cluster)

        await self._call(op, timeout, check_schema=False)

    async def _refuse_triggers(self, conn: OwnedConnection) -> None:
        _, rows = await conn.execute(self.sql.lease_triggers)
        if rows:
            names = ", ".join(str(r[0]) for r in rows)
            raise UnsafeSchema(
                f"fos_lease has an enabled trigger ({names}): a trigger can change the row count every "
                f"compare-and-set is judged by; drop it (DROP TRIGGER {rows[0][0]}) or disable it"
            )

    # ---- nodes and events --------------------------------------------------------------------------------

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
        """Upsert this node's row: UPDATE, and INSERT when there was none (a racing INSERT is retried as an
        UPDATE). One round trip once the row exists."""
        check_name("cluster", cluster)
        check_name("node", node)
        _check_instance(instance)
        healthy = None if app_healthy is None else int(app_healthy)
        update = (role, healthy, url, agent_version, instance, cluster, node)

        async def op(conn: OwnedConnection) -> None:
            rowcount, _ = await conn.execute(self.sql.update_node, update)
            if rowcount >= 1:
                return
            try:
                await conn.execute(self.sql.insert_node, (cluster, node, role, healthy, url, agent_version, instance))
            except pyodbc.Error as exc:
                if not is_duplicate_key(exc):
                    raise
                await conn.execute(self.sql.update_node, update)

        await self._call(op, timeout)

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
        """Append one event. One round trip."""
        check_name("cluster", cluster)
        if node is not None:
            check_name("node", node)

        async def op(conn: OwnedConnection) -> None:
            await conn.execute(self.sql.insert_event, (cluster, node, kind, epoch, detail))

        await self._call(op, timeout)

    async def list_events(
        self, cluster: str, *, limit: int = 20, since_id: int = 0, timeout: float | None = None
    ) -> list[Event]:
        """The newest events first (at most `limit`, with id > since_id). One round trip."""
        check_name("cluster", cluster)

        async def op(conn: OwnedConnection) -> list[Event]:
            sql = build(self.dialect, self.schema, events_limit=max(1, int(limit))).list_events
            _, rows = await conn.execute(sql, (cluster, since_id))
            return [
                Event(
                    int(r[0]),
                    cluster,
                    _as_datetime(r[1]),
                    r[2],
                    r[3],
                    None if r[4] is None else int(r[4]),
                    r[5],
                )
                for r in rows
            ]

        return await self._call(op, timeout)

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]:
        """Every node row of the cluster with its age on the database clock. One round trip."""
        check_name("cluster", cluster)

        async def op(conn: OwnedConnection) -> list[NodeRecord]:
            _, rows = await conn.execute(self.sql.list_nodes, (cluster,))
            return [
                NodeRecord(
                    cluster,
                    r[0],
                    r[1],
                    _as_bool(r[2]),
                    r[3],
                    r[4],
                    None if r[5] is None else float(r[5]) / 1000.0,
                    r[6],
                )
                for r in rows
            ]

        return await self._call(op, timeout)

    async def status_row(self, cluster: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        """The fos_lease_status view's row for the cluster, as a DBA would see it. One round trip."""
        check_name("cluster", cluster)

        async def op(conn: OwnedConnection) -> dict[str, Any] | None:
            _, rows = await conn.execute(self.sql.status, (cluster,))
            if not rows:
                return None
            row = dict(zip(STATUS_COLUMNS, rows[0], strict=True))
            for key in ("seconds_left", "standby_last_seen_age_s", "epoch", "transitions"):
                row[key] = _as_number(row[key])
            row["expired"] = bool(_as_bool(row["expired"]))
            row["holder_app_healthy"] = _as_bool(row["holder_app_healthy"])
            return row

        return await self._call(op, timeout)

    # ---- schema ----------------------------------------------------------------------------------------------

    async def init_schema(self, *, timeout: float = 30.0) -> tuple[int, int]:
        """Apply the missing schema versions, then refuse an enabled trigger on fos_lease (UnsafeSchema); return
        (version before, version after). Idempotent. Needs DDL rights; `fos run` never calls it."""

        async def op(conn: OwnedConnection) -> tuple[int, int]:
            await self._check_server_version(conn)
            try:
                _, rows = await conn.execute(self.sql.schema_version)
                before = int(rows[0][0] or 0) if rows else 0
            except pyodbc.Error as exc:
                if not isinstance(classify(exc), SchemaMissing):
                    raise
                before = 0
            for version, stmts in sorted(migrations(self.dialect, self.schema).items()):
                if version <= before:
                    continue
                for sql in stmts:
                    try:
                        await conn.execute(sql)
                    except pyodbc.Error as exc:  # ADD COLUMN without IF NOT EXISTS (MySQL, SQLite), run again
                        if "duplicate column" not in str(exc).lower():
                            raise
                try:
                    await conn.execute(record_version_sql(self.dialect, self.schema), (version,))
                except pyodbc.Error as exc:
                    if not is_duplicate_key(exc):
                        raise
            if self.dialect.name == "mssql" and before < 2:
                await retype_mssql_keys(conn, self.schema)
            await self._refuse_triggers(conn)
            self._schema_ok = True
            return before, SCHEMA_VERSION

        return await self._call(op, timeout, check_schema=False)

    async def _check_server_version(self, conn: OwnedConnection) -> None:
        if self.sql.server_version is None:
            return
        _, rows = await conn.execute(self.sql.server_version)
        version, edition = str(rows[0][0]), int(rows[0][1] or 0)
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if edition not in _AZURE_EDITIONS and major < MSSQL_MIN_MAJOR:
            raise StoreConfigError(
                f"SQL Server {version} is too old: fos needs SQL Server 2016 (13.x) or later, or Azure SQL"
            )
