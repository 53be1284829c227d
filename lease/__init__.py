"""The leader lease in the shared SQL database, reached through ODBC."""

from .dialects import DIALECTS, Dialect, get_dialect
from .errors import (
    InvalidName,
    ProtocolViolation,
    SchemaMissing,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from .model import AcquireResult, Event, EventKind, LeaseState, NodeRecord
from .odbc import redact_dsn
from .store import HistoryStore, LeaseStore, SqlLeaseStore

__all__ = [
    "DIALECTS",
    "AcquireResult",
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
    "get_dialect",
    "redact_dsn",
]
