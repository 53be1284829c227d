"""Every statement the store can emit, parsed offline; T-SQL especially, since CI has no SQL Server."""

from __future__ import annotations

import dataclasses

import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError

from lease import StoreConfigError, get_dialect, statements
from lease.dialects import DIALECTS, MSSQL, Dialect, dialect_for_dbms
from lease.schema import migrations, record_version_sql

SQLGLOT_NAME = {"mssql": "tsql", "postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite"}


def every_statement(d: Dialect) -> list[str]:
    built = statements.build(d)
    out = [getattr(built, f.name) for f in dataclasses.fields(built)]
    out += [stmt for stmts in migrations(d).values() for stmt in stmts]
    out += [record_version_sql(d), statements.build(d, events_limit=7).list_events]
    return out


def parse_strict(sql: str, dialect: str) -> exp.Expression:
    trees = sqlglot.parse(sql, read=dialect, error_level=ErrorLevel.RAISE)
    assert len(trees) == 1 and trees[0] is not None
    tree = trees[0]
    # sqlglot falls back to an opaque Command for syntax it does not model, which would hide errors.
    assert not list(tree.find_all(exp.Command)), f"not fully parsed: {sql}"
    return tree


@pytest.mark.parametrize("sql", every_statement(MSSQL))
def test_every_tsql_statement_parses(sql: str) -> None:
    parse_strict(sql, "tsql")


@pytest.mark.parametrize("name", ["postgresql", "mysql", "sqlite"])
def test_every_statement_of_the_other_dialects_parses(name: str) -> None:
    for sql in every_statement(DIALECTS[name]):
        if name == "mysql" and sql.startswith("CREATE TABLE"):
            continue  # sqlglot does not model ENGINE=InnoDB with an inline INDEX; the real server runs these
        parse_strict(sql, SQLGLOT_NAME[name])


@pytest.mark.parametrize(
    "broken",
    [
        "UPDATE fos_lease SET epoch = WHERE cluster_name = ?",
        "SELECT holder_node FROM fos_lease WHERE (cluster_name = ?",
        "SELECT DATEADD(millisecond, ?, SYSUTCDATETIME() FROM fos_lease",
    ],
)
def test_the_strict_parse_rejects_broken_tsql(broken: str) -> None:
    with pytest.raises(ParseError):
        parse_strict(broken, "tsql")


@pytest.mark.parametrize("d", list(DIALECTS.values()), ids=list(DIALECTS))
def test_lease_statements_judge_success_by_rowcount_only(d: Dialect) -> None:
    built = statements.build(d)
    for sql in (built.acquire, built.renew, built.release, built.insert_if_missing):
        upper = sql.upper()
        assert "MERGE" not in upper and "OUTPUT" not in upper and "RETURNING" not in upper
        assert "SP_GETAPPLOCK" not in upper


@pytest.mark.parametrize("d", list(DIALECTS.values()), ids=list(DIALECTS))
def test_time_comparisons_use_the_database_clock(d: Dialect) -> None:
    built = statements.build(d)
    assert d.now in built.acquire and d.now in built.renew and d.now in built.release
    assert "now()" not in built.acquire.lower().replace("utc_timestamp", "")


@pytest.mark.parametrize(
    ("dbms", "expected"),
    [
        ("PostgreSQL", "postgresql"),
        ("MariaDB", "mysql"),
        ("MySQL", "mysql"),
        ("SQLite", "sqlite"),
        ("Microsoft SQL Server", "mssql"),
    ],
)
def test_dbms_names_map_to_dialects(dbms: str, expected: str) -> None:
    assert dialect_for_dbms(dbms).name == expected


def test_unknown_dbms_is_refused_with_the_way_out() -> None:
    with pytest.raises(StoreConfigError, match=r"database\.dialect"):
        dialect_for_dbms("Oracle")


def test_dialect_aliases_are_accepted() -> None:
    assert get_dialect("MariaDB").name == "mysql" and get_dialect("postgres").name == "postgresql"
