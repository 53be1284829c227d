"""ODBC connections that the lease path owns: one daemon thread per connection, a query timeout on each,
thrown away (never reused) after any error or a missed deadline.

Why not aioodbc's pool: it never validates a connection, and a call stuck in the driver (a dead TCP peer)
would hold a shared executor thread. Here a stuck call only ever holds its own connection's thread; the caller
stops waiting at its deadline, the connection is abandoned and closed by its own thread once the driver
returns, and the next call opens a fresh connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import aioodbc
import pyodbc

from .errors import (
    SchemaMissing,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)

# pyodbc's (driver manager's) pooling would hand back connections we have decided are broken.
pyodbc.pooling = False

_SECRET = re.compile(r"(?i)\b(pwd|password|accesstoken|access_token)\s*=\s*(\{[^}]*\}|[^;]*)")


def redact_dsn(dsn: str) -> str:
    """The DSN with its secrets replaced, for messages and logs."""
    return _SECRET.sub(lambda m: f"{m.group(1)}=***", dsn)


class _ConnectionThread(concurrent.futures.Executor):
    """A single daemon thread running one connection's driver calls in order.

    Daemon, so that a call stuck in the driver can never keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()


class OwnedConnection:
    """An aioodbc connection bound to its own thread, with autocommit on and a query timeout set."""

    def __init__(self, conn: Any, thread: _ConnectionThread) -> None:
        self.conn = conn
        self._thread = thread
        self.on_statement: Callable[[], None] | None = None  # counts round trips for benchmarks

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, list[Any]]:
        """Run one statement; return (rowcount, rows)."""
        # One hop to the connection's thread for cursor, execute, fetch and close, instead of aioodbc's four
        # (the hops were most of an idle agent's CPU). Not `async with conn.cursor()` either: on a cancelled
        # call its exit would await closing the cursor on the thread still stuck in the driver.
        if self.on_statement is not None:
            self.on_statement()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, _execute_sync, self.conn._conn, sql, tuple(params))

    async def set_autocommit(self, value: bool) -> None:
        raw = self.conn._conn
        await asyncio.get_running_loop().run_in_executor(self._thread, setattr, raw, "autocommit", value)

    async def commit(self) -> None:
        await self.conn.commit()

    async def getinfo(self, what: int) -> Any:
        raw = self.conn._conn
        return await asyncio.get_running_loop().run_in_executor(self._thread, raw.getinfo, what)

    def abandon(self) -> None:
        """Forget this connection without waiting: its thread closes it after any call still in the driver."""
        raw = getattr(self.conn, "_conn", None)
        if raw is not None:
            self._thread.submit(_close_quietly, raw)
            self.conn._conn = None  # aioodbc must not warn about, or touch, a connection it no longer owns
        self._thread.shutdown(wait=False)

    async def close(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.conn.close()
        except (TimeoutError, pyodbc.Error):
            pass
        finally:
            self._thread.shutdown(wait=False)


def _execute_sync(raw: Any, sql: str, params: tuple[Any, ...]) -> tuple[int, list[Any]]:
    cur = raw.cursor()
    try:
        cur.execute(sql, *params)
        rowcount = int(cur.rowcount)
        rows = list(cur.fetchall()) if cur.description else []
    finally:
        cur.close()
    return rowcount, rows


def _close_quietly(raw: Any) -> None:
    with contextlib.suppress(pyodbc.Error):
        raw.close()


_counter = 0


async def open_connection(dsn: str, query_timeout: float) -> OwnedConnection:
    """Open a connection on a fresh thread. The caller bounds this with its own deadline.

    No ODBC login timeout is set: psqlODBC rejects SQL_ATTR_LOGIN_TIMEOUT outright, and the caller's
    deadline bounds the connect anyway (a connect still in the driver is abandoned with its thread).
    """
    global _counter
    _counter += 1
    thread = _ConnectionThread(f"fos-odbc-{_counter}")
    timeout_s = max(1, math.ceil(query_timeout))

    async def configure(raw: Any) -> None:
        # pyodbc applies this as each statement's SQL_ATTR_QUERY_TIMEOUT. psqlODBC refuses the connection-level
        # attribute; the store sets statement_timeout there instead, and the caller's deadline bounds all.
        with contextlib.suppress(pyodbc.Error):
            raw.timeout = timeout_s

    try:
        conn = await aioodbc.connect(
            dsn=dsn,
            autocommit=True,
            executor=thread,
            after_created=configure,
        )
    except BaseException:
        thread.shutdown(wait=False)
        raise
    return OwnedConnection(conn, thread)


class TransientUnavailable(StoreUnavailable):
    """A failure worth retrying within the caller's deadline (timeouts, dropped connections, deadlocks)."""


_MISSING_TABLE = ("no such table", "does not exist", "doesn't exist", "invalid object name")
_AUTH = (
    "password authentication failed",
    "access denied",
    "login failed",
    "authentication failed",
    "no pg_hba.conf entry",
)
_TRANSIENT_STATES = ("08", "HYT", "40")


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


def is_duplicate_key(exc: pyodbc.Error) -> bool:
    state = str(exc.args[0]) if exc.args else ""
    text = str(exc.args[1]).lower() if len(exc.args) > 1 else ""
    return state.startswith("23") or "duplicate" in text or "unique constraint" in text
