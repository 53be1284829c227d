"""The lease store: a narrow interface (read / try_acquire / renew / release) plus the node and event history,
implemented over ODBC for PostgreSQL, MariaDB/MySQL, SQLite and SQL Server.

Every call takes a deadline (`timeout`, seconds). Transient failures are retried with tenacity only while the
deadline allows; a call that is still inside the driver at the deadline is abandoned with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import pyodbc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from . import statements
from .dialects import Dialect, dialect_for_dbms, get_dialect
from .errors import ProtocolViolation, SchemaMissing, StoreConfigError, StoreUnavailable
from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord
from .names import check_name
from .odbc import OwnedConnection, TransientUnavailable, classify, is_duplicate_key, open_connection
from .schema import SCHEMA_VERSION, migrations, record_version_sql

T = TypeVar("T")

_MIN_ATTEMPT_S = 0.05  # no new attempt when less than this is left before the deadline


class LeaseStore(Protocol):
    """What the agent needs to hold a lease; like client-go's resourcelock.Interface, nothing more."""

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState: ...

    async def try_acquire(
        self,
        cluster: str,
        node: str,
        ttl_ms: int,
        *,
        expected: LeaseState | None = None,
        instance: str | None = None,
        timeout: float | None = None,
    ) -> AcquireResult: ...

    async def renew(
        self, cluster: str, node: str, epoch: int, ttl_ms: int, *, timeout: float | None = None
    ) -> bool: ...

    async def release(
        self, cluster: str, node: str, epoch: int, *, detail: str | None = None, timeout: float | None = None
    ) -> bool: ...


class HistoryStore(Protocol):
    """Node rows and the event history: what operators and DBAs read."""

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
    ) -> None: ...

    async def record_event(
        self,
        cluster: str,
        node: str | None,
        kind: str,
        epoch: int | None,
        detail: str | None,
        *,
        timeout: float | None = None,
    ) -> None: ...

    async def list_events(
        self, cluster: str, *, limit: int = 20, since_id: int = 0, timeout: float | None = None
    ) -> list[Event]: ...

    async def list_nodes(self, cluster: str, *, timeout: float | None = None) -> list[NodeRecord]: ...


def _judge(rowcount: int, what: str) -> bool:
    """A compare-and-set succeeded if exactly one row changed; anything but 0 or 1 is a protocol error."""
    if rowcount == 1:
        return True
    if rowcount == 0:
        return False
    raise ProtocolViolation(
        f"{what} reported {rowcount} rows: the database must report affected rows exactly "
        "(turn SET NOCOUNT off for the fos login; no triggers on fos_lease)"
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


class SqlLeaseStore:
    """LeaseStore and HistoryStore over ODBC. Round trips are stated on each operation."""

    def __init__(
        self,
        dsn: str,
        *,
        dialect: str | None = None,
        call_timeout: float = 2.0,
        max_idle: int = 2,
        max_connections: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dialect: Dialect | None = get_dialect(dialect) if dialect else None
        self._dsn = self._with_found_rows(dsn, self._dialect)
        self.call_timeout = call_timeout
        self._idle: list[OwnedConnection] = []
        self._max_idle = max_idle
        # Bounds concurrent calls (and so connections) of one store; a call waiting for a slot waits within its
        # own deadline. Abandoned connections no longer count.
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self.statements_sent = 0
        self._clock = clock
        self._sql: statements.Statements | None = None
        self._schema_ok = False
        self._closed = False

    @staticmethod
    def _with_found_rows(dsn: str, dialect: Dialect | None) -> str:
        # MariaDB/MySQL report *changed* rows unless the client asks for found rows (Connector/ODBC OPTION=2).
        if dialect is not None and dialect.name == "mysql" and "option=" not in dsn.lower().replace(" ", ""):
            return dsn.rstrip(";") + ";OPTION=2"
        return dsn

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            raise StoreConfigError("the dialect is not known before the first connection")
        return self._dialect

    # ---- connections -------------------------------------------------------------------------------------

    async def _checkout(self) -> OwnedConnection:
        if self._closed:
            raise StoreUnavailable("the lease store is closed")
        if self._idle:
            return self._idle.pop()
        conn = await open_connection(self._dsn, self.call_timeout)
        if self._dialect is None:
            try:
                self._dialect = dialect_for_dbms(str(await conn.getinfo(pyodbc.SQL_DBMS_NAME)))
            except BaseException:
                conn.abandon()
                raise
            found_rows_dsn = self._with_found_rows(self._dsn, self._dialect)
            if found_rows_dsn != self._dsn:
                conn.abandon()
                self._dsn = found_rows_dsn
                conn = await open_connection(self._dsn, self.call_timeout)
        if self._sql is None:
            self._sql = statements.build(self.dialect)
        if self.dialect.name == "postgresql":
            await conn.execute(f"SET statement_timeout = {max(1, int(self.call_timeout * 1000))}")
        conn.on_statement = self._count_statement
        return conn

    def _count_statement(self) -> None:
        self.statements_sent += 1

    def _checkin(self, conn: OwnedConnection) -> None:
        if len(self._idle) < self._max_idle and not self._closed:
            self._idle.append(conn)
        else:
            conn.abandon()

    async def _attempt(self, op: Callable[[OwnedConnection], Awaitable[T]], deadline: float) -> T:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise TransientUnavailable("the database call's deadline passed before it could start")
        conn: OwnedConnection | None = None
        try:
            async with asyncio.timeout(remaining), self._slots or contextlib.nullcontext():
                conn = await self._checkout()
                result = await op(conn)
        except TimeoutError:
            if conn is not None:
                conn.abandon()
            raise TransientUnavailable(f"the database did not answer within {remaining:.3g}s") from None
        except pyodbc.Error as exc:
            if conn is not None:
                conn.abandon()
            raise classify(exc) from None
        except BaseException:
            if conn is not None:
                conn.abandon()
            raise
        self._checkin(conn)
        return result

    async def _call(
        self,
        op: Callable[[OwnedConnection], Awaitable[T]],
        timeout: float | None,
        *,
        check_schema: bool = True,
    ) -> T:
        deadline = self._clock() + (timeout if timeout is not None else self.call_timeout)
        attempt_op = self._checked(op) if check_schema else op
        try:  # the common case, without building a retry loop
            return await self._attempt(attempt_op, deadline)
        except TransientUnavailable:
            if deadline - self._clock() < _MIN_ATTEMPT_S:
                raise

        def stop(_: RetryCallState) -> bool:
            return deadline - self._clock() < _MIN_ATTEMPT_S

        def wait(state: RetryCallState) -> float:
            backoff: float = min(0.5, 0.02 * 2.0**state.attempt_number)  # attempt 1 was the fast path
            return max(0.0, min(backoff, deadline - self._clock() - _MIN_ATTEMPT_S))

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientUnavailable), stop=stop, wait=wait, reraise=True
        ):
            with attempt:
                result = await self._attempt(attempt_op, deadline)
        return result

    def _checked(self, op: Callable[[OwnedConnection], Awaitable[T]]) -> Callable[[OwnedConnection], Awaitable[T]]:
        """Check the schema version once per store, on the first call, before any lease statement."""
        if self._schema_ok:
            return op

        async def run(conn: OwnedConnection) -> T:
            _, rows = await conn.execute(self.sql.schema_version)
            version = rows[0][0] if rows else None
            if version is None or int(version) < SCHEMA_VERSION:
                raise SchemaMissing(
                    f"the fos schema is at version {version or 0}, this agent needs {SCHEMA_VERSION}: "
                    "run `fos init-db --config FILE`"
                )
            self._schema_ok = True
            return await op(conn)

        return run

    @property
    def sql(self) -> statements.Statements:
        if self._sql is None:
            raise StoreConfigError("no statements before the first connection")
        return self._sql

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close(1.0) for c in idle))

    # ---- the lease -----------------------------------------------------------------------------------------

    @staticmethod
    def _state(cluster: str, row: Any | None) -> LeaseState:
        if row is None:
            return LeaseState(cluster=cluster, holder=None, epoch=0, remaining_ms=None)
        holder, epoch, remaining, ttl_ms, handover = row
        return LeaseState(
            cluster=cluster,
            holder=holder,
            epoch=int(epoch),
            remaining_ms=None if remaining is None else int(remaining),
            ttl_ms=None if ttl_ms is None else int(ttl_ms),
            handover_to=handover,
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
        timeout: float | None = None,
    ) -> AcquireResult:
        """Take the lease if it is free, expired by the database clock, or already ours; bump the epoch.

        Round trips: one read (skipped when the caller passes the state it read as `expected`), one insert
        when the cluster has no row yet, then one transaction of a compare-and-set UPDATE on the epoch plus the
        event INSERT and COMMIT. On a miss after a race, one more read returns who won.
        """
        check_name("cluster", cluster)
        check_name("node", node)
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be positive")

        async def op(conn: OwnedConnection) -> AcquireResult:
            seen = expected if expected is not None else await self._read(conn, cluster)
            if seen.remaining_ms is None and seen.epoch == 0 and expected is None:
                await self._insert_if_missing(conn, cluster)
            if seen.held and seen.holder != node:
                return AcquireResult(False, seen.epoch, seen)
            won = await self._transaction(conn, self._acquire_statements(cluster, node, ttl_ms, seen))
            if won:
                return AcquireResult(True, seen.epoch + 1, seen)
            return AcquireResult(False, seen.epoch, await self._read(conn, cluster))

        return await self._call(op, timeout)

    def _acquire_statements(
        self, cluster: str, node: str, ttl_ms: int, seen: LeaseState
    ) -> list[tuple[str, tuple[Any, ...]]]:
        if seen.holder is None:
            kind, detail = EventKind.ACQUIRED, "the lease was free"
        elif seen.holder == node:
            kind, detail = EventKind.RESUMED, f"re-acquired own lease of epoch {seen.epoch}"
        else:
            kind, detail = (
                EventKind.TAKEOVER,
                (f"{seen.holder} (epoch {seen.epoch}) expired {-(seen.remaining_ms or 0)} ms before the read"),
            )
        return [
            (self.sql.acquire, (node, node, ttl_ms, ttl_ms, cluster, seen.epoch, node)),
            (self.sql.insert_event, (cluster, node, str(kind), seen.epoch + 1, detail)),
        ]

    async def _transaction(self, conn: OwnedConnection, steps: list[tuple[str, tuple[Any, ...]]]) -> bool:
        """Run a compare-and-set and what goes with it atomically; commit only if the first changed 1 row."""
        # On any failure _attempt abandons the connection, which rolls the open transaction back with it.
        await conn.set_autocommit(False)
        rowcount, _ = await conn.execute(*steps[0])
        won = _judge(rowcount, "the lease UPDATE")
        if won:
            for sql, params in steps[1:]:
                await conn.execute(sql, params)
        await conn.commit()
        await conn.set_autocommit(True)
        return won

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
        """Give the lease up now (expires_at = now) if we still hold this epoch. One transaction: UPDATE,
        event INSERT, COMMIT."""
        check_name("cluster", cluster)
        check_name("node", node)

        async def op(conn: OwnedConnection) -> bool:
            return await self._transaction(
                conn,
                [
                    (self.sql.release, (cluster, node, epoch)),
                    (self.sql.insert_event, (cluster, node, str(EventKind.RELEASED), epoch, detail)),
                ],
            )

        return await self._call(op, timeout)

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
        timeout: float | None = None,
    ) -> None:
        """Upsert this node's row: UPDATE, and INSERT when there was none (a racing INSERT is retried as an
        UPDATE). One round trip once the row exists."""
        check_name("cluster", cluster)
        check_name("node", node)
        healthy = None if app_healthy is None else int(app_healthy)
        update = (role, healthy, url, agent_version, cluster, node)

        async def op(conn: OwnedConnection) -> None:
            rowcount, _ = await conn.execute(self.sql.update_node, update)
            if rowcount >= 1:
                return
            try:
                await conn.execute(self.sql.insert_node, (cluster, node, role, healthy, url, agent_version))
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
            sql = statements.build(self.dialect, events_limit=max(1, int(limit))).list_events
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
            keys = (
                "cluster",
                "holder",
                "epoch",
                "seconds_left",
                "expired",
                "handover_to",
                "transitions",
                "holder_role",
                "holder_app_healthy",
                "holder_url",
                "standby_last_seen_age_s",
            )
            row = dict(zip(keys, rows[0], strict=True))
            for key in ("seconds_left", "standby_last_seen_age_s", "epoch", "transitions"):
                row[key] = _as_number(row[key])
            row["expired"] = bool(_as_bool(row["expired"]))
            row["holder_app_healthy"] = _as_bool(row["holder_app_healthy"])
            return row

        return await self._call(op, timeout)

    # ---- schema ----------------------------------------------------------------------------------------------

    async def init_schema(self, *, timeout: float = 30.0) -> tuple[int, int]:
        """Apply the missing schema versions; return (version before, version after). Idempotent."""

        async def op(conn: OwnedConnection) -> tuple[int, int]:
            try:
                _, rows = await conn.execute(self.sql.schema_version)
                before = int(rows[0][0] or 0) if rows else 0
            except pyodbc.Error as exc:
                if not isinstance(classify(exc), SchemaMissing):
                    raise
                before = 0
            for version, stmts in sorted(migrations(self.dialect).items()):
                if version <= before:
                    continue
                for sql in stmts:
                    await conn.execute(sql)
                try:
                    await conn.execute(record_version_sql(self.dialect), (version,))
                except pyodbc.Error as exc:
                    if not is_duplicate_key(exc):
                        raise
            self._schema_ok = True
            return before, SCHEMA_VERSION

        return await self._call(op, timeout, check_schema=False)
