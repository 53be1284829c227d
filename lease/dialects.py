"""The four SQL dialects fos speaks. Each one only supplies clock expressions, column types and the few
statements that cannot be written portably; the lease statements themselves are built once, in statements.py.

Clock rules (each one has bitten other projects):
- PostgreSQL: `now()` is the *transaction* start; use statement_timestamp(), converted to UTC.
- SQL Server: SYSUTCDATETIME() into datetime2, DATEDIFF_BIG so long spans cannot overflow.
- MariaDB/MySQL: DATETIME(6), not TIMESTAMP (which converts through the session time zone and ends in 2038),
  filled from UTC_TIMESTAMP(6).
- SQLite: text 'YYYY-MM-DD HH:MM:SS.SSS' in UTC ('now' is stable within one statement).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import StoreConfigError

MAX_NAME = 64
DDL_LOCK_WAIT_MS = 200  # how long one try of an init-db DDL statement waits for its lock (see ddl_lock_wait)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class Dialect:
    name: str
    now: str  # the database's current UTC time
    ts_type: str  # column type of a UTC timestamp
    bool_type: str
    text_type: str  # long free text (event detail)
    id_column: str  # auto-increment primary key column definition
    _plus_ms: str  # template: now plus {ms} milliseconds
    _ms_between: str  # template: milliseconds from {a} to {b}
    _create_table: str  # template wrapping a CREATE TABLE so it is idempotent
    _create_index: str  # fields: {name} {qname} (index name with schema) {table} {qtable}
    _create_view: tuple[str, ...]
    _insert_lease_if_missing: str  # fields: {table} {p}; params: cluster (once, or twice on mssql)
    _limit: str
    name_type: str  # column type of a cluster or node name: case- and accent-sensitive
    name_param: str  # a name parameter, typed like the column so an index seek stays possible
    default_schema: str | None  # the schema objects are qualified with unless the config names one
    _add_column: str  # fields: {table} {column} {type}; idempotent, or its duplicate error is tolerated
    _triggers_on: str  # fields: {schema} {table} {qtable}: enabled triggers on a table (one name per row)
    # template: now minus {ms} milliseconds, for look-backs (history, anti-flap) longer than 32-bit milliseconds
    _ms_ago: str

    def plus_ms(self, ms: str) -> str:
        return self._plus_ms.format(ms=ms)

    def ms_between(self, a: str, b: str) -> str:
        return self._ms_between.format(a=a, b=b)

    def ms_ago(self, ms: str) -> str:
        """The database's now minus `ms` milliseconds (one marker or expression, may exceed 2**31; whole seconds
        on SQL Server)."""
        return self._ms_ago.format(ms=ms)

    def ms_until(self, column: str) -> str:
        """Milliseconds from the database's now to `column` (negative once it has passed)."""
        return self.ms_between(self.now, column)

    def create_table(self, table: str, body: str) -> str:
        return self._create_table.format(table=table, body=body)

    def create_index(self, name: str, table: str, columns: str, schema: str | None) -> str:
        return self._create_index.format(
            name=name, qname=qualify(name, schema), table=table, qtable=qualify(table, schema), columns=columns
        )

    def insert_lease_if_missing(self, schema: str | None) -> str:
        return self._insert_lease_if_missing.format(table=qualify("fos_lease", schema), p=self.name_param)

    def add_column(self, table: str, column: str, type_: str, schema: str | None) -> str:
        return self._add_column.format(table=qualify(table, schema), bare=table, column=column, type=type_)

    def triggers_on(self, table: str, schema: str | None) -> str:
        """SELECT the names of the enabled triggers on `table` (literal names, no parameters)."""
        return self._triggers_on.format(
            schema=schema or "", table=table, qtable=qualify(table, schema), qmaster=qualify("sqlite_master", schema)
        )

    def session_setup(self, call_timeout: float, dbms_name: str = "") -> list[str]:
        """Per-session guards sent once on a new connection (one round trip): bounded statement time and lock
        waits, and no transaction left open by a client that died mid-way."""
        ms = max(1, math.ceil(call_timeout * 1000))
        if self.name == "postgresql":
            return [
                f"SELECT set_config('statement_timeout', '{ms}', false), set_config('lock_timeout', '{ms}', false), "
                f"set_config('idle_in_transaction_session_timeout', '{max(ms, 1000)}', false)"
            ]
        if self.name == "mysql":
            seconds = max(1, math.ceil(call_timeout))
            guards = f"SET SESSION innodb_lock_wait_timeout = {seconds}"
            if "mariadb" in dbms_name.lower():  # MySQL has no idle-transaction guard
                guards += f", idle_transaction_timeout = {max(seconds, 1)}"
            return [guards]
        if self.name == "mssql":
            return [f"SET LOCK_TIMEOUT {ms}; SET XACT_ABORT ON"]
        return []

    def ddl_lock_wait(self, dbms_name: str = "") -> list[str]:
        """Statements that shorten this session's lock waits for init-db's DDL. A DDL statement waiting for a
        lock (behind a transaction left open, e.g. idle in transaction) makes every later statement on the table
        queue behind it, the holder's renewals included: it must give up quickly and try again later instead.
        MySQL counts whole seconds (at least 1; MariaDB takes 0: do not wait at all)."""
        if self.name == "postgresql":
            return [f"SELECT set_config('lock_timeout', '{DDL_LOCK_WAIT_MS}', false)"]
        if self.name == "mysql":
            return [f"SET SESSION lock_wait_timeout = {0 if 'mariadb' in dbms_name.lower() else 1}"]
        if self.name == "mssql":
            return [f"SET LOCK_TIMEOUT {DDL_LOCK_WAIT_MS}"]
        return []  # SQLite: one writer at a time; its busy timeout (the DSN's Timeout) bounds the wait

    def ddl_lock_wait_reset(self, call_timeout: float, dbms_name: str = "") -> list[str]:
        """Statements that undo ddl_lock_wait, so the connection goes back to the store's pool as any other."""
        ms = max(1, math.ceil(call_timeout * 1000))  # as session_setup
        if self.name == "postgresql":
            return [f"SELECT set_config('lock_timeout', '{ms}', false)"]
        if self.name == "mysql":
            return ["SET SESSION lock_wait_timeout = DEFAULT"]
        if self.name == "mssql":
            return [f"SET LOCK_TIMEOUT {ms}"]
        return []

    def create_view(self, view: str, select: str) -> list[str]:
        return [s.format(view=view, select=select) for s in self._create_view]

    def limit(self, select_rest: str, n: str) -> str:
        """`SELECT <select_rest>` limited to n rows; select_rest starts after the SELECT keyword."""
        return self._limit.format(rest=select_rest, n=n)


def check_schema_name(schema: str) -> str:
    if not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema):
        raise StoreConfigError(
            f"database.schema {schema!r} is not a plain identifier: use 1-63 letters, digits or '_', "
            "starting with a letter or '_'"
        )
    return schema


def qualify(name: str, schema: str | None) -> str:
    return f"{schema}.{name}" if schema else name


_LEASE_INSERT_COLUMNS = (
    "(cluster_name, holder_node, epoch, acquired_at, renewed_at, expires_at, ttl_ms, handover_to, transitions)"
)

POSTGRESQL = Dialect(
    name="postgresql",
    now="(statement_timestamp() AT TIME ZONE 'UTC')",
    ts_type="TIMESTAMP(6)",
    bool_type="BOOLEAN",
    text_type="TEXT",
    id_column="id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    _plus_ms="((statement_timestamp() AT TIME ZONE 'UTC') + CAST({ms} AS INTEGER) * INTERVAL '1 millisecond')",
    _ms_between="CAST(FLOOR(EXTRACT(EPOCH FROM ({b} - {a})) * 1000) AS BIGINT)",
    _create_table="CREATE TABLE IF NOT EXISTS {table} ({body})",
    _create_index="CREATE INDEX IF NOT EXISTS {name} ON {qtable} ({columns})",
    # OR REPLACE keeps the grants on the view; new columns therefore only ever go at its end.
    _create_view=("CREATE OR REPLACE VIEW {view} AS {select}",),
    _insert_lease_if_missing=(
        "INSERT INTO {table} " + _LEASE_INSERT_COLUMNS + " VALUES ({p}, NULL, 0, NULL, NULL, NULL, NULL, NULL, 0) "
        "ON CONFLICT (cluster_name) DO NOTHING"
    ),
    _limit="SELECT {rest} LIMIT {n}",
    name_type=f"VARCHAR({MAX_NAME})",  # text comparison is by the database's deterministic collation
    name_param="?",
    default_schema="public",
    _add_column="ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type}",
    _triggers_on=(
        "SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = to_regclass('{qtable}') "
        "AND NOT t.tgisinternal AND t.tgenabled <> 'D'"
    ),
    _ms_ago="((statement_timestamp() AT TIME ZONE 'UTC') - CAST({ms} AS BIGINT) * INTERVAL '1 millisecond')",
)

MYSQL = Dialect(
    name="mysql",
    now="UTC_TIMESTAMP(6)",
    ts_type="DATETIME(6)",
    bool_type="BOOLEAN",
    text_type="TEXT CHARACTER SET utf8mb4",  # the database's default may be latin1: details name operators
    id_column="id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    _plus_ms="DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ({ms} * 1000) MICROSECOND)",
    _ms_between="FLOOR(TIMESTAMPDIFF(MICROSECOND, {a}, {b}) / 1000)",
    _create_table="CREATE TABLE IF NOT EXISTS {table} ({body}) ENGINE=InnoDB",
    _create_index="CREATE INDEX IF NOT EXISTS {name} ON {qtable} ({columns})",
    # INVOKER: a DEFINER view stops working (error 1449) once the account that ran init-db is dropped.
    _create_view=("CREATE OR REPLACE SQL SECURITY INVOKER VIEW {view} AS {select}",),
    _insert_lease_if_missing=(
        "INSERT IGNORE INTO {table} "
        + _LEASE_INSERT_COLUMNS
        + " VALUES ({p}, NULL, 0, NULL, NULL, NULL, NULL, NULL, 0)"
    ),
    _limit="SELECT {rest} LIMIT {n}",
    name_type=f"VARCHAR({MAX_NAME}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",  # the default _ci folds case
    name_param="?",
    default_schema=None,  # the DSN's database
    _add_column="ALTER TABLE {table} ADD COLUMN {column} {type}",  # MySQL 8 has no IF NOT EXISTS here
    # MySQL/MariaDB triggers cannot be disabled: every one is enabled.
    _triggers_on=(
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_TABLE = '{table}' "
        "AND EVENT_OBJECT_SCHEMA = COALESCE(NULLIF('{schema}', ''), DATABASE())"
    ),
    _ms_ago="DATE_SUB(UTC_TIMESTAMP(6), INTERVAL ({ms} * 1000) MICROSECOND)",
)

SQLITE = Dialect(
    name="sqlite",
    now="strftime('%Y-%m-%d %H:%M:%f', 'now')",
    ts_type="TEXT",
    bool_type="INTEGER",
    text_type="TEXT",
    id_column="id INTEGER PRIMARY KEY AUTOINCREMENT",
    _plus_ms="strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {ms} / 1000.0))",
    # REAL, not CAST(... AS INTEGER): the SQLite ODBC driver reads an integer expression as 32 bits, so ages
    # beyond 24.8 days wrapped (an expired lease read as held). A double holds whole milliseconds exactly.
    _ms_between="ROUND((julianday({b}) - julianday({a})) * 86400000.0)",
    _create_table="CREATE TABLE IF NOT EXISTS {table} ({body})",
    _create_index="CREATE INDEX IF NOT EXISTS {qname} ON {table} ({columns})",  # SQLite qualifies the index
    _create_view=("DROP VIEW IF EXISTS {view}", "CREATE VIEW {view} AS {select}"),
    _insert_lease_if_missing=(
        "INSERT OR IGNORE INTO {table} "
        + _LEASE_INSERT_COLUMNS
        + " VALUES ({p}, NULL, 0, NULL, NULL, NULL, NULL, NULL, 0)"
    ),
    _limit="SELECT {rest} LIMIT {n}",
    name_type=f"VARCHAR({MAX_NAME})",  # SQLite compares text with BINARY unless told otherwise
    name_param="?",
    default_schema=None,
    _add_column="ALTER TABLE {table} ADD COLUMN {column} {type}",  # a duplicate column error is tolerated
    _triggers_on=("SELECT name FROM {qmaster} WHERE type = 'trigger' AND tbl_name = '{table}'"),
    _ms_ago="strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', -({ms}) / 1000.0))",
)

MSSQL = Dialect(
    name="mssql",
    now="SYSUTCDATETIME()",
    ts_type="DATETIME2(6)",
    bool_type="BIT",
    text_type="NVARCHAR(4000)",
    id_column="id BIGINT IDENTITY(1,1) NOT NULL PRIMARY KEY",
    _plus_ms="DATEADD(millisecond, {ms}, SYSUTCDATETIME())",
    _ms_between="DATEDIFF_BIG(millisecond, {a}, {b})",
    _create_table="IF OBJECT_ID(N'{table}', N'U') IS NULL CREATE TABLE {table} ({body})",
    _create_index=(
        "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{name}' AND object_id = OBJECT_ID(N'{qtable}')) "
        "CREATE INDEX {name} ON {qtable} ({columns})"
    ),
    # Not CREATE OR ALTER VIEW (2016 SP1): DROP VIEW IF EXISTS is in 2016 RTM, and CREATE VIEW is sent as a batch
    # of its own, as T-SQL requires.
    _create_view=("DROP VIEW IF EXISTS {view}", "CREATE VIEW {view} AS {select}"),
    # No MERGE (it races without HOLDLOCK): a guarded INSERT; a duplicate-key error from a concurrent insert
    # is also accepted by the store.
    _insert_lease_if_missing=(
        "INSERT INTO {table} " + _LEASE_INSERT_COLUMNS + " "
        "SELECT {p}, NULL, 0, NULL, NULL, NULL, NULL, NULL, 0 WHERE NOT EXISTS "
        "(SELECT 1 FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE cluster_name = {p})"
    ),
    _limit="SELECT TOP ({n}) {rest}",
    # NVARCHAR: pyodbc binds str as NVARCHAR, and against a VARCHAR column SQL Server converts the column (a scan
    # that U-locks every row). BIN2: the default collation folds case, Python's comparisons do not.
    name_type=f"NVARCHAR({MAX_NAME}) COLLATE Latin1_General_100_BIN2",
    name_param=f"CAST(? AS NVARCHAR({MAX_NAME}))",  # one declared size: one cached plan for every name length
    default_schema="dbo",
    _add_column="IF COL_LENGTH(N'{table}', N'{column}') IS NULL ALTER TABLE {table} ADD {column} {type}",
    _triggers_on=("SELECT t.name FROM sys.triggers t WHERE t.parent_id = OBJECT_ID(N'{qtable}') AND t.is_disabled = 0"),
    # DATEADD takes an int, and int milliseconds end at 24 days: whole seconds (the look-back is up to 999 ms
    # longer than asked, which history and anti-flap counting do not mind).
    _ms_ago="DATEADD(second, -CAST(CAST({ms} AS BIGINT) / 1000 AS INT), SYSUTCDATETIME())",
)

DIALECTS: dict[str, Dialect] = {d.name: d for d in (POSTGRESQL, MYSQL, SQLITE, MSSQL)}
ALIASES = {
    "postgres": "postgresql",
    "pg": "postgresql",
    "mariadb": "mysql",
    "sqlserver": "mssql",
    "tsql": "mssql",
    "sqlite3": "sqlite",
}


def get_dialect(name: str) -> Dialect:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return DIALECTS[key]
    except KeyError:
        raise StoreConfigError(
            f"database.dialect {name!r} is unknown: use one of {', '.join(sorted(DIALECTS))}, "
            "or omit it to detect the DBMS from the connection"
        ) from None


def dialect_for_dbms(dbms_name: str) -> Dialect:
    """Map ODBC's SQL_DBMS_NAME to a dialect."""
    lowered = dbms_name.lower()
    for needle, dialect in (
        ("postgres", POSTGRESQL),
        ("mariadb", MYSQL),
        ("mysql", MYSQL),
        ("sqlite", SQLITE),
        ("sql server", MSSQL),
    ):
        if needle in lowered:
            return dialect
    raise StoreConfigError(
        f"the database reports DBMS {dbms_name!r}, which fos does not support: use PostgreSQL, MariaDB/MySQL, "
        "SQLite or SQL Server, or set database.dialect if this DBMS is compatible with one of them"
    )
