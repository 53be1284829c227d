"""ODBC connection strings: redaction that cannot leak a secret's tail, and quoting of substituted values."""

from __future__ import annotations

import pytest

from lease import quote_odbc_value, redact_dsn
from lease.dsn import tokenize, value_of, with_attribute


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("Driver=PostgreSQL Unicode;Server=db;Uid=fos;Pwd=s3cret;Port=5432", "s3cret"),
        ("DRIVER={ODBC Driver 18 for SQL Server};PASSWORD={a;b=c};UID=sa", "a;b=c"),
        ("Driver=x;password = hunter2", "hunter2"),
        ("Driver=x;Pwd={ab}};cd};Uid=u", "cd"),  # `}}` is an escaped `}`: the value is `ab};cd`
        ("Driver=x;Pwd={}}}}tail};Uid=u", "tail"),
        ("Driver=x;Pwd={unterminated;Uid=u", "unterminated"),
        ("Driver=x;AccessToken={tok;XYZ}", "XYZ"),
        ("Pwd=first;Driver=x", "first"),
        ("Driver=x;Pwd= {spaced}}x} ;Uid=u", "spaced"),
    ],
)
def test_redacted_dsn_hides_the_whole_secret(dsn: str, secret: str) -> None:
    red = redact_dsn(dsn)
    assert secret not in red and "***" in red


def test_redaction_keeps_what_an_operator_needs_to_see() -> None:
    red = redact_dsn("Driver={ODBC Driver 18 for SQL Server};Server=db1;Uid=fos;Pwd={x}};y}")
    assert red == "Driver={ODBC Driver 18 for SQL Server};Server=db1;Uid=fos;Pwd=***"


@pytest.mark.parametrize(
    "value",
    ["plain", "a;b", "a}b", "{a}", "}}", "a=b", " lead", "trail ", "x;}}{;y", "", "ünïcode;"],
)
def test_a_quoted_value_reads_back_unchanged_and_ends_where_it_should(value: str) -> None:
    dsn = f"Driver=x;Pwd={quote_odbc_value(value)};Uid=fos"
    attrs = tokenize(dsn)
    assert [a.key for a in attrs] == ["Driver", "Pwd", "Uid"]
    assert value_of(attrs[1]) == value
    assert value_of(attrs[2]) == "fos"


def test_values_without_special_characters_are_not_quoted() -> None:
    assert quote_odbc_value("s3cret-Pass_1") == "s3cret-Pass_1"
    assert quote_odbc_value("a;b}c") == "{a;b}}c}"


def test_an_attribute_is_added_only_when_missing() -> None:
    assert with_attribute("Driver=x;Pwd={a;option=1}", "OPTION", "2") == "Driver=x;Pwd={a;option=1};OPTION=2"
    assert with_attribute("Driver=x;option=3", "OPTION", "2") == "Driver=x;option=3"
