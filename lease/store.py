"""The lease store over ODBC for PostgreSQL, MariaDB/MySQL, SQLite and SQL Server: the LeaseStore and
HistoryStore interfaces (lease/interface.py) plus the DBA-facing status row, preflight and init-db.

Every call takes a deadline (`timeout`, seconds); see lease/calls.py for connections and retries. Every lease
change is one compare-and-set UPDATE in autocommit: no transaction is ever open across round trips, so a client
that dies mid-way cannot leave the lease row locked. The event row is written after the compare-and-set, in
autocommit too; an event may be lost, a lease change never half-done.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyodbc
import structlog

from .calls import call_deadline
from .control import SqlControl
from .errors import SchemaMissing, StoreConfigError, StoreUnavailable, UnsafeSchema
from .interface import ControlStore, HistoryStore, LeaseStore
from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord, check_lookback
from .names import check_name
from .odbc import OwnedConnection, classify, is_duplicate_key, is_lock_timeout
from .rows import _as_bool, _as_datetime, _as_number, _check_instance, _judge
from .schema import SCHEMA_VERSION, migrations, record_version_sql
from .statements import STATUS_COLUMNS, build
from .upgrade import retype_mssql_keys

__all__ = ["ControlStore", "HistoryStore", "LeaseStore", "SqlLeaseStore", "_judge"]

log = structlog.get_logger("fos.lease")

DDL_RETRY_S = 0.5  # init-db's pause between two tries of a DDL statement that timed out waiting for its lock
MSSQL_MIN_MAJOR = 13  # SQL Server 2016: DATEDIFF_BIG, DROP VIEW IF EXISTS
_AZURE_EDITIONS = (5, 8)  # Azure SQL Database, Azure SQL Managed Instance: report 12.x, support all of it


_SECONDS = ("switchover_due_in_s", "maintenance_for_s", "disabled_for_s", "failover_off_for_s")
_TIMES = ("switchover_due_at", "switchover_requested_at", "maintenance_since", "disabled_since", "failover_off_since")


def may_resume(seen: LeaseState, node: str, instance: str | None) -> bool:
    """A node may take its own unexpired lease again only from the same agent process (instance); a row written
    without an instance (an older agent) matches only a caller without one."""
    return seen.holder == node and seen.holder_instance == instance


class SqlLeaseStore(SqlControl):
    """LeaseStore, HistoryStore and ControlStore (lease/control.py) over ODBC. Round trips are stated on each operation.

    Constructor: `dsn` (ODBC connection string), `dialect` (detected from the connection when None), `schema`
    (qualifies every object; default dbo on mssql, public on postgresql, none on mysql/sqlite), `call_timeout`
    (default deadline, seconds; also bounds server-side lock waits), `max_idle` connections kept, `max_connections`
    concurrent calls, `max_threads` live connection threads including abandoned ones (default
    max(8, 2 * max_connections)); a call beyond that fails at once with StoreUnavailable.
    """

    # ---- the lease -----------------------------------------------------------------------------------------

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
            if seen.acquire_refusal(node, instance) is not None:  # the compare-and-set cannot succeed
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
        head = (node, node, instance, ttl_ms, ttl_ms, cluster, epoch, node, node, node, node, node, node)
        if instance is None:
            sql, params = self.sql.acquire_without_instance, head
        else:
            sql, params = self.sql.acquire, (*head, instance)
        rowcount, _ = await conn.execute(sql, params)
        return _judge(rowcount, "the lease UPDATE")

    @staticmethod
    def _acquire_event(seen: LeaseState, node: str, instance: str | None) -> tuple[EventKind, str]:
        if seen.holder is None:
            if seen.reserved_for == node:
                return EventKind.ACQUIRED, "handed over to this node"
            return EventKind.ACQUIRED, "the lease was free"
        if may_resume(seen, node, instance):
            return EventKind.RESUMED, f"re-acquired own lease of epoch {seen.epoch}"
        return (
            EventKind.TAKEOVER,
            f"{seen.holder} (epoch {seen.epoch}) expired {-(seen.remaining_ms or 0)} ms before the read",
        )

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
            rowcount, _ = await conn.execute(self.sql.release, (node, cluster, node, epoch))
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
        sees: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Upsert this node's row: UPDATE, and INSERT when there was none (a racing INSERT is retried as an
        UPDATE). One round trip once the row exists."""
        check_name("cluster", cluster)
        check_name("node", node)
        _check_instance(instance)
        if sees is not None and len(sees) > 64:
            raise ValueError(f"sees {sees[:70]!r}... is longer than the column's 64 characters")
        healthy = None if app_healthy is None else int(app_healthy)
        update = (role, healthy, url, agent_version, instance, sees, cluster, node)

        async def op(conn: OwnedConnection) -> None:
            rowcount, _ = await conn.execute(self.sql.update_node, update)
            if rowcount >= 1:
                return
            try:
                insert = (cluster, node, role, healthy, url, agent_version, instance, sees)
                await conn.execute(self.sql.insert_node, insert)
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
        self,
        cluster: str,
        *,
        limit: int = 20,
        since_id: int = 0,
        since_ms: int | None = None,
        timeout: float | None = None,
    ) -> list[Event]:
        """The newest events first (at most `limit`, with id > since_id, and with since_ms within that many
        milliseconds of the database's now, at most ten years; whole seconds on SQL Server). One round trip."""
        check_name("cluster", cluster)
        if since_ms is not None:
            check_lookback(since_ms, "since_ms")

        async def op(conn: OwnedConnection) -> list[Event]:
            built = build(self.dialect, self.schema, events_limit=max(1, int(limit)))
            if since_ms is None:
                _, rows = await conn.execute(built.list_events, (cluster, since_id))
            else:
                _, rows = await conn.execute(built.list_events_since, (cluster, since_id, since_ms))
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
                    r[7],
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
            for key in ("seconds_left", "standby_last_seen_age_s", "epoch", "transitions", *_SECONDS):
                row[key] = _as_number(row[key])
            for key in _TIMES:
                row[key] = None if row[key] is None else _as_datetime(row[key])
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
            for sql in self.dialect.ddl_lock_wait(conn.dbms_name):  # undone below; on an error it is not reused
                await conn.execute(sql)
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
                        await self._ddl(conn, sql, timeout)
                    except pyodbc.Error as exc:  # ADD COLUMN without IF NOT EXISTS (MySQL, SQLite), run again
                        if "duplicate column" not in str(exc).lower():
                            raise
                try:
                    await self._ddl(conn, record_version_sql(self.dialect, self.schema), timeout, (version,))
                except pyodbc.Error as exc:
                    if not is_duplicate_key(exc):
                        raise
            if self.dialect.name == "mssql" and before < 2:
                await retype_mssql_keys(conn, self.schema)
            await self._refuse_triggers(conn)
            for sql in self.dialect.ddl_lock_wait_reset(self.call_timeout, conn.dbms_name):
                await conn.execute(sql)
            self._schema_ok = True
            return before, SCHEMA_VERSION

        return await self._call(op, timeout, check_schema=False)

    async def _ddl(self, conn: OwnedConnection, sql: str, timeout: float, params: tuple[Any, ...] = ()) -> None:
        """Run one init-db statement; while it times out waiting for a lock (Dialect.ddl_lock_wait: a short wait,
        so renewals never queue long behind it), try again every DDL_RETRY_S until the call's deadline."""
        while True:
            try:
                await conn.execute(sql, params)
                return
            except pyodbc.Error as exc:
                if not is_lock_timeout(exc):
                    raise
                if call_deadline.get() - self._clock() < DDL_RETRY_S + 1.0:
                    raise StoreUnavailable(
                        f"init-db could not lock the fos tables for `{sql[:60]}...` within {timeout:g} s: another "
                        "session holds a lock on them (a transaction left open, e.g. `idle in transaction` in "
                        "pg_stat_activity, or SHOW PROCESSLIST): end it, then run init-db again (nothing is lost; "
                        "the upgrade goes on where it stopped)"
                    ) from None
                log.info("init_db_lock_busy", statement=sql[:60], retry_in_s=DDL_RETRY_S)
                await asyncio.sleep(DDL_RETRY_S)

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
