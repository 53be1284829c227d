"""structlog set-up: key=value lines (or JSON) on stderr, with secrets scrubbed from every event."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from lease import redact_dsn

_SECRET_KEYS = ("password", "pwd", "secret", "token")


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
        elif isinstance(value, str) and "=" in value:
            event[key] = redact_dsn(value)
    return event


def configure(level: str = "info", json: bool = False) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
