"""The leader lease in the shared SQL database, reached through ODBC.

`import lease`, `lease.model`, `lease.interface` and `lease.memory` load no database driver: SqlLeaseStore (and
with it pyodbc) is imported only when first used, so the pure decision code can be imported without pyodbc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dialects import DIALECTS, Dialect, get_dialect
from .dsn import quote_odbc_value, redact_dsn
from .errors import (
    InvalidName,
    ProtocolViolation,
    SchemaMissing,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    UnsafeSchema,
)
from .interface import ControlStore, HistoryStore, LeaseStore
from .model import AcquireResult, Control, Event, EventKind, LeaseState, NodeRecord, Switchover

if TYPE_CHECKING:
    from .store import SqlLeaseStore

__all__ = [
    "DIALECTS",
    "AcquireResult",
    "Control",
    "ControlStore",
    "Dialect",
    "Event",
    "EventKind",
    "HistoryStore",
    "InvalidName",
    "LeaseState",
    "LeaseStore",
    "NodeRecord",
    "ProtocolViolation",
    "SchemaMissing",
    "SqlLeaseStore",
    "StoreAuthError",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailable",
    "Switchover",
    "UnsafeSchema",
    "get_dialect",
    "quote_odbc_value",
    "redact_dsn",
]


def __getattr__(name: str) -> Any:
    if name == "SqlLeaseStore":
        from .store import SqlLeaseStore

        return SqlLeaseStore
    raise AttributeError(f"module 'lease' has no attribute {name!r}")
