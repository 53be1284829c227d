"""ODBC connections that the lease path owns: one daemon thread per connection, which alone ever touches the
driver's connection object — connect, session set-up, statements, close, and the final release of the object.

Why not aioodbc: its Connection.__del__ closes an unclosed connection synchronously on whatever thread drops it
(the event loop's), while the connection's own thread may still be inside the driver; the fence timer and HTTP
froze behind it. Here the raw pyodbc connection never leaves its thread: the loop only queues jobs and awaits
plain results (tuples), so no finalizer can run an ODBC call on the loop. A stuck call only ever holds its own
thread; the caller stops waiting at its deadline, the connection is abandoned and closed by its own thread once
the driver returns. Threads are counted against a per-store budget that includes abandoned ones still stuck in
the driver, so a dead database cannot make a store create threads without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pyodbc

from .dsn import quote_odbc_value, redact_dsn
from .errors import SchemaMissing, StoreAuthError, StoreConfigError, StoreError, StoreUnavailable
from .statements import inline_nulls

__all__ = [
    "OwnedConnection",
    "ThreadBudget",
    "TransientUnavailable",
    "classify",
    "is_duplicate_key",
    "open_connection",
    "quote_odbc_value",
    "redact_dsn",
]

# pyodbc's (driver manager's) pooling would hand back connections we have decided are broken.
pyodbc.pooling = False


class TransientUnavailable(StoreUnavailable):
    """A failure worth retrying within the caller's deadline (timeouts, dropped connections, deadlocks)."""


class ThreadBudget:
    """How many connection threads may be alive at once, abandoned ones included. Thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the thread budget must be at least 1")
        self.limit = limit
        self._live = 0
        self._lock = threading.Lock()

    @property
    def live(self) -> int:
        return self._live

    def take(self) -> bool:
        with self._lock:
            if self._live >= self.limit:
                return False
            self._live += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._live -= 1


_names = itertools.count(1)


class _Worker:
    """One daemon thread and the one raw connection it owns. Jobs are `fn(raw_holder, *args)`."""

    def __init__(self, budget: ThreadBudget) -> None:
        self.raw: Any = None  # read and written only by this worker's thread
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._budget = budget
        self.exited: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Daemon, so that a call stuck in the driver can never keep the process from exiting.
        self._thread = threading.Thread(target=self._work, name=f"fos-odbc-{next(_names)}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        """Close the connection after the jobs already queued, then end the thread."""
        self._jobs.put(None)

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                future, fn, args = job
                del job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(self, *args))
                    except BaseException as exc:
                        # Without its traceback: the frames hold the cursor, which must not be freed on the loop.
                        future.set_exception(exc.with_traceback(None))
                del future, fn, args
        finally:
            raw, self.raw = self.raw, None
            if raw is not None:
                with contextlib.suppress(pyodbc.Error):
                    raw.close()
            del raw  # the driver's object is released here, on this thread
            self._budget.give_back()
            self.exited.set_result(None)


def _connect(worker: _Worker, dsn: str, query_timeout_s: int, setup: Callable[[str], list[str]]) -> str:
    """Connect, set the query timeout, run the session set-up; return the DBMS name. On this worker's thread."""
    worker.raw = pyodbc.connect(dsn, autocommit=True)
    # pyodbc applies this as each statement's SQL_ATTR_QUERY_TIMEOUT. psqlODBC refuses the connection-level
    # attribute; the session set-up bounds statements there instead, and the caller's deadline bounds all.
    with contextlib.suppress(pyodbc.Error):
        worker.raw.timeout = query_timeout_s
    dbms = str(worker.raw.getinfo(pyodbc.SQL_DBMS_NAME))
    if any(name in dbms.lower() for name in ("mariadb", "mysql")):
        # MariaDB Connector/ODBC 3.1 corrupts or refuses UTF-16 parameters of 128 characters and more (pyodbc sends
        # them in pieces with SQLPutData): send text as UTF-8, the Unicode drivers' connection character set.
        worker.raw.setencoding(encoding="utf-8")
    for sql in setup(dbms):
        cur = worker.raw.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()
    return dbms


def _execute(worker: _Worker, sql: str, params: tuple[Any, ...]) -> tuple[int, list[tuple[Any, ...]]]:
    if worker.raw is None:
        raise pyodbc.OperationalError("08003", "the connection is closed")
    cur = worker.raw.cursor()
    try:
        cur.execute(sql, *params)
        rowcount = int(cur.rowcount)
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        cur.close()
    return rowcount, rows


class OwnedConnection:
    """A connection on its own thread, with autocommit on, a query timeout and the session guards set."""

    def __init__(self, worker: _Worker, dbms_name: str) -> None:
        self._worker = worker
        self.dbms_name = dbms_name
        self.broken = False  # set when a statement's outcome is unknown: the connection must not be reused
        self.on_statement: Callable[[], None] | None = None  # counts round trips for benchmarks
        self._abandoned = False

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement (None parameters written as NULL); return (rowcount, rows). One thread hop."""
        sql, bound = inline_nulls(sql, params)
        if self.on_statement is not None:
            self.on_statement()
        return await asyncio.wrap_future(self._worker.submit(_execute, sql, bound))

    def abandon(self) -> None:
        """Forget this connection without waiting: its thread closes it after any call still in the driver."""
        if not self._abandoned:
            self._abandoned = True
            self._worker.stop()

    async def close(self, timeout: float) -> None:
        """Close the connection and wait up to `timeout` for its thread to finish."""
        self.abandon()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(self._worker.exited)

    def __del__(self) -> None:
        # Only queues the close: the driver is touched on the worker's thread, never here.
        self.abandon()


async def open_connection(
    dsn: str, query_timeout: float, budget: ThreadBudget, setup: Callable[[str], list[str]]
) -> OwnedConnection:
    """Open a connection on a fresh thread and run `setup(dbms_name)`'s statements on it, all on that thread.

    The caller bounds this with its own deadline; if it stops waiting (timeout, cancel) or the set-up fails, the
    connection is closed by its own thread. Raises StoreUnavailable at once when the budget has no thread left.
    No ODBC login timeout is set: psqlODBC rejects SQL_ATTR_LOGIN_TIMEOUT outright.
    """
    if not budget.take():
        raise StoreUnavailable(
            f"{budget.limit} database connection threads are still busy (calls stuck in the driver): "
            "the database is not answering"
        )
    try:
        worker = _Worker(budget)
    except BaseException:
        budget.give_back()
        raise
    try:
        dbms = await asyncio.wrap_future(worker.submit(_connect, dsn, max(1, math.ceil(query_timeout)), setup))
    except BaseException:
        worker.stop()
        raise
    return OwnedConnection(worker, dbms)


_MISSING_TABLE = ("no such table", "does not exist", "doesn't exist", "invalid object name")
_AUTH = (
    "password authentication failed",
    "access denied",
    "login failed",
    "authentication failed",
    "no pg_hba.conf entry",
)
_TRANSIENT_STATES = ("08", "HYT", "40")
# SQL Server / Azure SQL native errors worth a retry: database unavailable or moving (40613, 40197, 4060),
# throttling and resource limits (40501, 10928, 10929, 49918-49920), deadlock victim (1205).
TRANSIENT_NATIVE_ERRORS = frozenset({40613, 40197, 40501, 49918, 49919, 49920, 4060, 10928, 10929, 1205})
_NATIVE = re.compile(r"\((\d{3,6})\)")


def native_errors(text: str) -> set[int]:
    """Native error numbers in a driver message ('... (40613) (SQLExecDirectW)')."""
    return {int(n) for n in _NATIVE.findall(text)}


def classify(exc: pyodbc.Error) -> StoreError:
    """Turn a driver error into the store's typed error with a one-line message."""
    state = str(exc.args[0]) if exc.args else ""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    line = " ".join(text.split())
    lowered = line.lower()
    if state == "IM002" or "can't open lib" in lowered or "data source name not found" in lowered:
        return StoreConfigError(
            f"ODBC driver or DSN not found ({line}): install the driver package (odbc-postgresql, odbc-mariadb, "
            "libsqliteodbc, tdsodbc or msodbcsql18) and check the Driver= name against `odbcinst -q -d`"
        )
    if native_errors(line) & TRANSIENT_NATIVE_ERRORS:  # before the login check: 4060 also says "login failed"
        return TransientUnavailable(f"database unavailable for now [{state}]: {line}")
    if state.startswith("28") or any(s in lowered for s in _AUTH):
        return StoreAuthError(
            f"the database refused the login ({line}): check Uid/Pwd in database.dsn and that the server admits "
            "this client (pg_hba.conf, GRANT)"
        )
    if any(s in lowered for s in _MISSING_TABLE) or state in ("42S02", "42P01"):
        return SchemaMissing(f"the fos tables are missing ({line}): run `fos init-db --config FILE` first")
    if state.startswith(_TRANSIENT_STATES) or "locked" in lowered or "busy" in lowered or "timeout" in lowered:
        return TransientUnavailable(f"database unavailable [{state}]: {line}")
    if "could not connect" in lowered or "can't connect" in lowered or "connection refused" in lowered:
        return TransientUnavailable(f"database unreachable [{state}]: {line}")
    return StoreUnavailable(f"database error [{state}]: {line}")


_LOCK_TIMEOUTS = ("lock timeout", "lock wait timeout", "lock request time out")


def is_lock_timeout(exc: pyodbc.Error) -> bool:
    """The statement gave up waiting for a lock (PostgreSQL lock_timeout 55P03, MySQL lock_wait_timeout 1205,
    SQL Server LOCK_TIMEOUT 1222): nothing was changed."""
    state = str(exc.args[0]) if exc.args else ""
    text = " ".join(str(exc.args[1] if len(exc.args) > 1 else exc).lower().split())
    return state == "55P03" or any(s in text for s in _LOCK_TIMEOUTS)


def is_duplicate_key(exc: pyodbc.Error) -> bool:
    state = str(exc.args[0]) if exc.args else ""
    text = str(exc.args[1]).lower() if len(exc.args) > 1 else ""
    return state.startswith("23") or "duplicate" in text or "unique constraint" in text
