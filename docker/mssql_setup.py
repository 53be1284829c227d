"""Create on SQL Server what docs/database-setup.md ("SQL Server") asks for, idempotently, as the sa login.

    mssql_setup.py logins   before `fos init-db`: database fos, logins and users fos_owner and fos_agent, the
                            owner's rights (db_ddladmin; SELECT, INSERT, UPDATE on schema dbo)
    mssql_setup.py grants   after `fos init-db`: the agent's SELECT/INSERT/UPDATE on the fos tables and SELECT on
                            fos_schema and the view (init-db re-creates the view, so run it after every init-db)

Passwords come from the environment only, never from arguments (which `ps` shows): MSSQL_SA_PASSWORD, and for
`logins` FOS_OWNER_PASSWORD and FOS_AGENT_PASSWORD (SQL Server's password policy: 8 or more characters from three
of upper case, lower case, digits, symbols). Run again with other passwords, it changes them.

It waits up to --wait seconds for the server to accept sa's login: a fresh SQL Server container needs 10-60 s.
Used by the compose stack's init-db service (docker/init-db.sh) and by the CI job `mssql`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pyodbc

DRIVERS = ("freetds", "msodbcsql18")


def odbc_quote(value: str) -> str:
    """An ODBC connection-string value in braces, so ';' or '}' in a password cannot end it early."""
    return "{" + value.replace("}", "}}") + "}"


def sa_dsn(driver: str, server: str, port: int, password: str) -> str:
    """Connection string of the sa login to master, as README's "Database connection strings" shows per driver."""
    if driver == "freetds":
        return (
            f"Driver=FreeTDS;Server={server};Port={port};Database=master;Uid=sa;Pwd={odbc_quote(password)};"
            "TDS_Version=7.4"
        )
    # A container's certificate is self-signed: trust it, on this private network only.
    return (
        f"Driver={{ODBC Driver 18 for SQL Server}};Server=tcp:{server},{port};Database=master;Uid=sa;"
        f"Pwd={odbc_quote(password)};Encrypt=yes;TrustServerCertificate=yes"
    )


def sql_literal(value: str) -> str:
    """An N'...' literal (CREATE LOGIN takes no parameters)."""
    return "N'" + value.replace("'", "''") + "'"


def login_statements(owner_password: str, agent_password: str) -> list[str]:
    out = []
    for login, password in (("fos_owner", owner_password), ("fos_agent", agent_password)):
        out.append(
            f"IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'{login}') "
            f"CREATE LOGIN {login} WITH PASSWORD = {sql_literal(password)} "
            f"ELSE ALTER LOGIN {login} WITH PASSWORD = {sql_literal(password)}"
        )
    out += [
        "IF DB_ID(N'fos') IS NULL CREATE DATABASE fos",
        "USE fos",
        "IF USER_ID(N'fos_owner') IS NULL CREATE USER fos_owner FOR LOGIN fos_owner WITH DEFAULT_SCHEMA = dbo",
        "IF USER_ID(N'fos_agent') IS NULL CREATE USER fos_agent FOR LOGIN fos_agent WITH DEFAULT_SCHEMA = dbo",
        "ALTER ROLE db_ddladmin ADD MEMBER fos_owner",
        "GRANT SELECT, INSERT, UPDATE ON SCHEMA::dbo TO fos_owner",
    ]
    return out


GRANT_STATEMENTS = [
    "USE fos",
    "GRANT SELECT, INSERT, UPDATE ON dbo.fos_lease TO fos_agent",
    "GRANT SELECT, INSERT, UPDATE ON dbo.fos_node TO fos_agent",
    "GRANT SELECT, INSERT, UPDATE ON dbo.fos_event TO fos_agent",
    "GRANT SELECT ON dbo.fos_schema TO fos_agent",
    "GRANT SELECT ON dbo.fos_lease_status TO fos_agent",
]


def connect(dsn: str, wait: float) -> pyodbc.Connection:
    """Connect, retrying until `wait` seconds have passed; the error never shows the connection string."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return pyodbc.connect(dsn, autocommit=True, timeout=5)
        except pyodbc.Error as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"mssql_setup: SQL Server did not accept sa's login within {wait:g}s: {exc}") from None
            time.sleep(2)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"mssql_setup: {name} is not set in the environment: export it (never pass it as an argument)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("logins", "grants"))
    parser.add_argument("--server", default="db", help="SQL Server's host name (default: db, the compose service)")
    parser.add_argument("--port", type=int, default=1433)
    parser.add_argument("--driver", choices=DRIVERS, default="freetds")
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the server (default 180)")
    args = parser.parse_args(argv)
    statements = (
        login_statements(env("FOS_OWNER_PASSWORD"), env("FOS_AGENT_PASSWORD"))
        if args.step == "logins"
        else GRANT_STATEMENTS
    )
    conn = connect(sa_dsn(args.driver, args.server, args.port, env("MSSQL_SA_PASSWORD")), args.wait)
    try:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
    finally:
        conn.close()
    print(f"mssql_setup: {args.step} done on {args.server}:{args.port}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
