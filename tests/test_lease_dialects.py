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


def every_statement(d: Dialect, schema: str | None = None) -> list[str]:
    """Every statement text of the dialect, with the session set-up split into its single statements."""
    built = statements.build(d, schema)
    out = [getattr(built, f.name) for f in dataclasses.fields(built)]
    out += [stmt for stmts in migrations(d, schema).values() for stmt in stmts]
    out += [record_version_sql(d, schema), statements.build(d, schema, events_limit=7).list_events]
    out += [part for sql in d.session_setup(2.0, "MariaDB") for part in sql.split("; ")]
    out += [*d.ddl_lock_wait("MariaDB"), *d.ddl_lock_wait("MySQL"), *d.ddl_lock_wait_reset(2.0, "MariaDB")]
    return [s for s in out if s is not None]


def parse_strict(sql: str, dialect: str) -> exp.Expression:
    trees = sqlglot.parse(sql, read=dialect, error_level=ErrorLevel.RAISE)
    assert len(trees) == 1 and trees[0] is not None
    tree = trees[0]
    # sqlglot falls back to an opaque Command for syntax it does not model, which would hide errors.
    assert not list(tree.find_all(exp.Command)), f"not fully parsed: {sql}"
    return tree


@pytest.mark.parametrize("sql", every_statement(MSSQL, "dbo") + every_statement(MSSQL, "fos"))
def test_every_tsql_statement_parses(sql: str) -> None:
    parse_strict(sql, "tsql")


@pytest.mark.parametrize("name", ["postgresql", "mysql", "sqlite"])
def test_every_statement_of_the_other_dialects_parses(name: str) -> None:
    d = DIALECTS[name]
    for sql in every_statement(d, d.default_schema) + every_statement(d, "fos"):
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


@pytest.mark.parametrize("bad", ["dbo;drop", "", "1abc", "a.b", "x" * 64, "d b", "dbo\n"])
def test_a_schema_that_is_not_a_plain_identifier_is_refused_naming_the_key(bad: str) -> None:
    from lease import SqlLeaseStore

    with pytest.raises(StoreConfigError, match=r"database\.schema"):
        SqlLeaseStore("Driver=X", dialect="postgresql", schema=bad)


@pytest.mark.parametrize(
    ("sql", "params", "expected_sql", "expected_params"),
    [
        (
            "INSERT INTO t (a, b, c) VALUES (?, ?, ?)",
            (1, None, "x"),
            "INSERT INTO t (a, b, c) VALUES (?, NULL, ?)",
            (1, "x"),
        ),
        ("SELECT '?', ? FROM t", (None,), "SELECT '?', NULL FROM t", ()),
        ("UPDATE t SET a = CAST(? AS NVARCHAR(64))", (None,), "UPDATE t SET a = CAST(NULL AS NVARCHAR(64))", ()),
        ("SELECT ?", ("v",), "SELECT ?", ("v",)),
    ],
)
def test_none_parameters_are_written_as_null_and_never_bound(
    sql: str, params: tuple[object, ...], expected_sql: str, expected_params: tuple[object, ...]
) -> None:
    assert statements.inline_nulls(sql, params) == (expected_sql, expected_params)


def test_inlining_refuses_a_parameter_count_that_does_not_match_the_markers() -> None:
    with pytest.raises(ValueError):
        statements.inline_nulls("SELECT ?, ?", (None,))
    with pytest.raises(ValueError):
        statements.inline_nulls("SELECT ?", (None, 1))


@pytest.mark.parametrize("d", list(DIALECTS.values()), ids=list(DIALECTS))
def test_no_lease_statement_keeps_a_transaction_open(d: Dialect) -> None:
    every = " ".join(every_statement(d, d.default_schema)).upper()
    assert "BEGIN TRAN" not in every and "COMMIT" not in every


def test_mariadb_views_run_with_the_invokers_rights() -> None:
    view = [s for s in every_statement(DIALECTS["mysql"]) if "VIEW" in s and "fos_lease_status" in s]
    assert view and all("SQL SECURITY INVOKER" in s for s in view)


def test_sql_server_views_avoid_create_or_alter_which_2016_rtm_lacks() -> None:
    assert not [s for s in every_statement(MSSQL, "dbo") if "CREATE OR ALTER" in s.upper()]
