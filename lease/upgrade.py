"""The one upgrade step that plain idempotent statements cannot express: on SQL Server, fos 0.1 created the key
name columns as VARCHAR under the database's default collation. Against the NVARCHAR parameters that scans and
U-locks whole tables, and the default collation folds case. A key column cannot be altered in place, so its
primary key (with a generated name) or index is dropped, the column retyped, and the key re-created.

Runs inside `fos init-db` only, after the schema-2 statements. Checked offline (the statements parse as T-SQL and
the flow runs against a scripted driver); not yet against a real SQL Server.
"""

from __future__ import annotations

import re

from .dialects import MSSQL, qualify
from .errors import StoreConfigError
from .odbc import OwnedConnection

# table -> (key columns, primary key columns); fos_event's cluster_name is in an index, not its primary key
KEYS = {
    "fos_lease": (("cluster_name",), ("cluster_name",)),
    "fos_node": (("cluster_name", "node_name"), ("cluster_name", "node_name")),
    "fos_event": (("cluster_name",), ()),
}
_CONSTRAINT = re.compile(r"[A-Za-z0-9_]{1,128}")


def stale_key_columns_sql(schema: str | None) -> str:
    tables = ", ".join(f"OBJECT_ID(N'{qualify(t, schema)}')" for t in KEYS)
    return (
        "SELECT OBJECT_NAME(c.object_id), c.name FROM sys.columns c "
        f"WHERE c.object_id IN ({tables}) AND c.name IN (N'cluster_name', N'node_name') "
        "AND (TYPE_NAME(c.user_type_id) <> N'nvarchar' OR c.collation_name <> N'Latin1_General_100_BIN2')"
    )


def primary_key_sql(table: str, schema: str | None) -> str:
    return (
        "SELECT name FROM sys.key_constraints "
        f"WHERE type = N'PK' AND parent_object_id = OBJECT_ID(N'{qualify(table, schema)}')"
    )


def retype_statements(table: str, columns: list[str], pk_name: str | None, schema: str | None) -> list[str]:
    """Drop the key, retype `columns`, re-create the key (all of the table's key columns are NOT NULL)."""
    q = qualify(table, schema)
    key_columns, pk_columns = KEYS[table]
    out: list[str] = []
    if pk_columns:
        if pk_name is None or not _CONSTRAINT.fullmatch(pk_name):
            raise StoreConfigError(f"cannot upgrade {q}: its primary key constraint {pk_name!r} was not found")
        out.append(f"ALTER TABLE {q} DROP CONSTRAINT [{pk_name}]")
    else:
        out.append(f"DROP INDEX IF EXISTS fos_event_cluster_id ON {q}")
    out += [f"ALTER TABLE {q} ALTER COLUMN {c} {MSSQL.name_type} NOT NULL" for c in columns if c in key_columns]
    if pk_columns:
        out.append(f"ALTER TABLE {q} ADD CONSTRAINT pk_{table} PRIMARY KEY ({', '.join(pk_columns)})")
    else:
        out.append(f"CREATE INDEX fos_event_cluster_id ON {q} (cluster_name, id)")
    return out


async def retype_mssql_keys(conn: OwnedConnection, schema: str | None) -> list[str]:
    """Retype fos 0.1's VARCHAR key columns; return the statements run (none on a database created by 0.2)."""
    _, rows = await conn.execute(stale_key_columns_sql(schema))
    stale: dict[str, list[str]] = {}
    for table, column in rows:
        stale.setdefault(str(table), []).append(str(column))
    done: list[str] = []
    for table, columns in stale.items():
        pk_name = None
        if KEYS[table][1]:
            _, pk = await conn.execute(primary_key_sql(table, schema))
            pk_name = str(pk[0][0]) if pk else None
        for sql in retype_statements(table, columns, pk_name, schema):
            await conn.execute(sql)
            done.append(sql)
    return done
