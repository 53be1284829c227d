"""The lease store of a cluster file, the one way every command and the agent open it."""

from __future__ import annotations

from lease import SqlLeaseStore

from .config import Config


def open_store(cfg: Config, at_least: float = 0.0) -> SqlLeaseStore:
    """A store on `database.dsn` with the configured dialect and schema. Its per-call deadline is the agent's
    (database.call_timeout), or `at_least` seconds for one-shot commands that need not keep a heartbeat."""
    return SqlLeaseStore(
        cfg.database.dsn,
        dialect=cfg.database.dialect,
        schema=cfg.database.schema,
        call_timeout=max(cfg.call_timeout, at_least),
    )


COMMAND_CALL_TIMEOUT_S = 5.0  # operator commands keep no heartbeat: give a slow database time


def command_store(cfg: Config) -> SqlLeaseStore:
    """The store an operator command (status, init-db, mirror, doctor) uses."""
    return open_store(cfg, at_least=COMMAND_CALL_TIMEOUT_S)
