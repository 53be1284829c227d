"""Helpers shared by the benchmark scripts: percentiles, tables, and saving results with date and commit."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Plain-text table; columns are (key, heading)."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].rjust(widths[i]) for i in range(len(columns))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def save(name: str, payload: dict[str, Any]) -> str:
    commit = (
        subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "unknown"
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(ROOT, "bench", "results", f"{name}-{stamp}-{commit}.json")
    with open(path, "w") as f:
        json.dump({"name": name, "date": stamp, "commit": commit, **payload}, f, indent=2)
    return path


@contextlib.contextmanager
def databases(only: list[str]) -> Iterator[list[tuple[str, str]]]:
    """Throwaway servers for the dialects asked for; yields (dialect, dsn) pairs and stops them afterwards."""
    from tests.support import dbservers

    servers: list[dbservers.DbServer] = []
    targets: list[tuple[str, str]] = []
    try:
        if "postgresql" in only:
            servers.append(dbservers.start_postgresql())
            targets.append(("postgresql", servers[-1].dsn()))
        if "mysql" in only:
            servers.append(dbservers.start_mariadb())
            targets.append(("mysql", servers[-1].dsn()))
        if "sqlite" in only:
            targets.append(
                ("sqlite", f"Driver=SQLite3;Database={tempfile.mkdtemp(prefix='fos-bench-')}/lease.db;Timeout=5000")
            )
        yield targets
    finally:
        for s in servers:
            s.stop()
