"""What every SqlLeaseStore operation shares: reading the lease row (with its control state) into a LeaseState,
judging a compare-and-set by its rowcount, the best-effort event after a change, and creating a missing row.
Driver values are normalised here (booleans as text, numbers as Decimal, timestamps as text on SQLite)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pyodbc
import structlog

from .calls import OdbcCalls, call_deadline
from .errors import ProtocolViolation
from .model import Control, LeaseState, Switchover
from .names import check_name
from .odbc import OwnedConnection, is_duplicate_key

log = structlog.get_logger("fos.lease")


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


def _as_int(value: Any) -> int | None:
    """Whole milliseconds from an int, a Decimal, or a float (SQLite's ages are REAL; see dialects.SQLITE)."""
    if value is None or isinstance(value, int):
        return value
    return int(float(value))


def _as_datetime(value: Any) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _check_instance(instance: str | None) -> str | None:
    return None if instance is None else check_name("instance", instance)


def _control(values: tuple[Any, ...]) -> Control:
    """The control columns of statements.CONTROL_COLUMNS, in that order."""
    to, due_in, by, age, maintenance, maintenance_by, disabled, disabled_by, off, reason, request_id = values
    switchover = None
    if age is not None:
        switchover = Switchover(to, _as_int(due_in) or 0, by, _as_int(age) or 0, _as_int(request_id))
    return Control(
        switchover=switchover,
        maintenance_ms=_as_int(maintenance),
        maintenance_by=maintenance_by,
        disabled_ms=_as_int(disabled),
        disabled_by=disabled_by,
        failover_off_ms=_as_int(off),
        failover_off_reason=reason,
    )


class LeaseRows(OdbcCalls):
    """The lease row's shared reads and writes; SqlLeaseStore's operations are built on these."""

    @staticmethod
    def _state(cluster: str, row: Any | None) -> LeaseState:
        if row is None:
            return LeaseState.missing(cluster)
        holder, epoch, remaining, ttl_ms, handover, instance = row[:6]
        return LeaseState(
            cluster=cluster,
            holder=holder,
            epoch=int(epoch),
            remaining_ms=_as_int(remaining),
            ttl_ms=_as_int(ttl_ms),
            handover_to=handover,
            holder_instance=instance,
            control=_control(tuple(row[6:17])),
        )

    async def _read(self, conn: OwnedConnection, cluster: str) -> LeaseState:
        _, rows = await conn.execute(self.sql.read, (cluster,))
        return self._state(cluster, rows[0] if rows else None)

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
