"""How one lease-store call reaches the database: a deadline, a connection (idle or new, with its session guards),
tenacity retries of transient failures only while the deadline allows, and the schema version checked once.

A connection is reused only after a call that ended cleanly; any error, a missed deadline or a statement whose
outcome is unknown abandons it (its own thread closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyodbc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from . import statements
from .dialects import Dialect, check_schema_name, dialect_for_dbms, get_dialect
from .dsn import with_attribute
from .errors import SchemaMissing, StoreConfigError, StoreUnavailable
from .odbc import OwnedConnection, ThreadBudget, TransientUnavailable, classify, open_connection
from .schema import SCHEMA_VERSION

T = TypeVar("T")

_MIN_ATTEMPT_S = 0.05  # no new attempt when less than this is left before the deadline
DEFAULT_MAX_THREADS = 8

# The deadline (on the store's clock) of the call running in this task: best-effort work after a lease change
# (the event row) uses what is left of it.
call_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("fos_call_deadline")


class OdbcCalls:
    """Connections, deadlines and retries for SqlLeaseStore."""

    DEFAULT_MAX_THREADS = DEFAULT_MAX_THREADS

    def __init__(
        self,
        dsn: str,
        *,
        dialect: str | None = None,
        schema: str | None = None,
        call_timeout: float = 2.0,
        max_idle: int = 2,
        max_connections: int | None = None,
        max_threads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dialect: Dialect | None = get_dialect(dialect) if dialect else None
        self._schema_given = check_schema_name(schema) if schema is not None else None
        self._dsn = self._with_found_rows(dsn, self._dialect)
        self.call_timeout = call_timeout
        self._idle: list[OwnedConnection] = []
        self._max_idle = max_idle
        # Bounds concurrent calls (and so open connections) of one store; a call waiting for a slot waits within
        # its own deadline.
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        # Bounds live connection threads, abandoned ones still stuck in the driver included.
        self.threads = ThreadBudget(max_threads or max(DEFAULT_MAX_THREADS, 2 * (max_connections or 0)))
        self.statements_sent = 0
        self._clock = clock
        self._sql: statements.Statements | None = None
        self._schema_ok = False
        self._closed = False

    @staticmethod
    def _with_found_rows(dsn: str, dialect: Dialect | None) -> str:
        # MariaDB/MySQL report *changed* rows unless the client asks for found rows (Connector/ODBC OPTION=2).
        if dialect is not None and dialect.name == "mysql":
            return with_attribute(dsn, "OPTION", "2")
        return dsn

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            raise StoreConfigError("the dialect is not known before the first connection")
        return self._dialect

    @property
    def schema(self) -> str | None:
        """The schema every object is qualified with: the configured one, else the dialect's default."""
        return self._schema_given if self._schema_given is not None else self.dialect.default_schema

    @property
    def sql(self) -> statements.Statements:
        if self._sql is None:
            raise StoreConfigError("no statements before the first connection")
        return self._sql

    # ---- connections -------------------------------------------------------------------------------------

    def _session_setup(self, dbms_name: str) -> list[str]:
        # Runs on the connection's thread: pure, touches no store state.
        return (self._dialect or dialect_for_dbms(dbms_name)).session_setup(self.call_timeout, dbms_name)

    async def _open(self) -> OwnedConnection:
        return await open_connection(self._dsn, self.call_timeout, self.threads, self._session_setup)

    async def _checkout(self) -> OwnedConnection:
        if self._closed:
            raise StoreUnavailable("the lease store is closed")
        if self._idle:
            return self._idle.pop()
        conn = await self._open()
        if self._dialect is None:
            try:
                self._dialect = dialect_for_dbms(conn.dbms_name)
            except BaseException:
                conn.abandon()
                raise
            found_rows_dsn = self._with_found_rows(self._dsn, self._dialect)
            if found_rows_dsn != self._dsn:
                conn.abandon()
                self._dsn = found_rows_dsn
                conn = await self._open()
        if self._sql is None:
            self._sql = statements.build(self.dialect, self.schema)
        conn.on_statement = self._count_statement
        return conn

    def _count_statement(self) -> None:
        self.statements_sent += 1

    def _checkin(self, conn: OwnedConnection) -> None:
        if len(self._idle) < self._max_idle and not self._closed and not conn.broken:
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
        token = call_deadline.set(deadline)
        try:
            return await self._call_until(op, deadline, check_schema)
        finally:
            call_deadline.reset(token)

    async def _call_until(
        self, op: Callable[[OwnedConnection], Awaitable[T]], deadline: float, check_schema: bool
    ) -> T:
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

    async def _check_schema_version(self, conn: OwnedConnection) -> None:
        _, rows = await conn.execute(self.sql.schema_version)
        version = rows[0][0] if rows else None
        if version is None or int(version) < SCHEMA_VERSION:
            raise SchemaMissing(
                f"the fos schema is at version {version or 0}, this agent needs {SCHEMA_VERSION}: "
                "run `fos init-db --config FILE`"
            )
        self._schema_ok = True

    def _checked(self, op: Callable[[OwnedConnection], Awaitable[T]]) -> Callable[[OwnedConnection], Awaitable[T]]:
        """Check the schema version once per store, on the first call, before any lease statement."""
        if self._schema_ok:
            return op

        async def run(conn: OwnedConnection) -> T:
            await self._check_schema_version(conn)
            return await op(conn)

        return run

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close(1.0) for c in idle))
