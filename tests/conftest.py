"""Shared fixtures: real database servers (started once per session) and lease stores over real ODBC drivers."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from lease import SqlLeaseStore
from tests.support import dbservers

IN_CI = os.environ.get("CI") == "true"
MSSQL_DSN = os.environ.get("FOS_TEST_MSSQL_DSN")
DIALECTS = ["postgresql", "mysql", "sqlite", "mssql"]

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test in this run uses, so tests can share one schema."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def _unavailable(what: str, exc: BaseException) -> None:
    # In CI a missing server is a failure, never a quiet skip.
    if IN_CI:
        pytest.fail(f"{what} could not start in CI: {exc}")
    pytest.skip(f"{what} not available here: {exc}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[dbservers.DbServer]:
    try:
        server = dbservers.start_postgresql()
    except (OSError, RuntimeError, TimeoutError) as exc:
        _unavailable("PostgreSQL", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[dbservers.DbServer]:
    try:
        server = dbservers.start_mariadb()
    except (OSError, RuntimeError, TimeoutError) as exc:
        _unavailable("MariaDB", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sqlite_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="fos-sqlite-") as d:
        yield os.path.join(d, "lease.db")


def sqlite_dsn(path: str) -> str:
    return f"Driver=SQLite3;Database={path};Timeout=2000"


@pytest.fixture(scope="session")
def dsns(request: pytest.FixtureRequest, sqlite_path: str) -> dict[str, str]:
    """DSN per dialect; servers start lazily, only for the dialects a test run asks for."""
    return _LazyDsns(request, sqlite_path)  # type: ignore[return-value]


class _LazyDsns(dict[str, str]):
    def __init__(self, request: pytest.FixtureRequest, sqlite_path: str) -> None:
        super().__init__()
        self._request = request
        self._sqlite_path = sqlite_path

    def __missing__(self, dialect: str) -> str:
        if dialect == "postgresql":
            dsn = self._request.getfixturevalue("pg_server").dsn()
        elif dialect == "mysql":
            dsn = self._request.getfixturevalue("mariadb_server").dsn()
        elif dialect == "sqlite":
            dsn = sqlite_dsn(self._sqlite_path)
        elif dialect == "mssql":
            if not MSSQL_DSN:
                pytest.skip("MS SQL Server: set FOS_TEST_MSSQL_DSN to an ODBC connection string to run these")
            dsn = MSSQL_DSN
        else:
            raise KeyError(dialect)
        self[dialect] = dsn
        return dsn


_initialised: set[str] = set()


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(dialect: str, dsns: dict[str, str]) -> AsyncIterator[SqlLeaseStore]:
    """A lease store on a real database with the fos schema in place."""
    s = SqlLeaseStore(dsns[dialect], dialect=dialect, call_timeout=5.0)
    if dialect not in _initialised:
        await s.init_schema()
        _initialised.add(dialect)
    yield s
    await s.close()


@pytest.fixture
def lan() -> Iterator[Any]:
    """A fresh LAN of namespaced test hosts, removed afterwards even when the test fails."""
    from tests.support.netns import Lan

    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("network namespace tests need root, and CI runs as root")
        pytest.skip("network namespace tests need root (CAP_NET_ADMIN, CAP_NET_RAW)")
    net = Lan()
    try:
        yield net
    finally:
        net.close()
