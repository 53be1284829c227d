"""The fos schema, versioned so later releases can migrate it. `fos init-db` applies what is missing.

Tables (one lease row per cluster, one node row per agent, an append-only event history) and the view
`fos_lease_status` that a DBA reads with plain SQL. There are deliberately no triggers on fos_lease: they would
change the rowcount that every compare-and-set is judged by.
"""

from __future__ import annotations

from .dialects import Dialect, qualify
from .outbox import OUTBOX_VERSION, outbox_v4
from .statements import BY_MAX, REASON_MAX

SCHEMA_VERSION = 4  # 3: operations (switchover, maintenance, disable, anti-flap); 4: the notification outbox

# Name columns per table: (column, NOT NULL?) — typed by the dialect's case-sensitive name type.
_NAME_COLUMNS = {
    "fos_lease": (("cluster_name", True), ("holder_node", False), ("handover_to", False)),
    "fos_node": (("cluster_name", True), ("node_name", True)),
    "fos_event": (("cluster_name", True), ("node_name", False)),
}


def _status_view_select(d: Dialect, schema: str | None) -> str:
    seconds_left = f"({d.ms_until('l.expires_at')} / 1000.0)"
    age = f"({d.ms_between('s.last_seen', d.now)} / 1000.0)"
    lease, node = qualify("fos_lease", schema), qualify("fos_node", schema)
    return (
        "SELECT l.cluster_name, l.holder_node, l.epoch, l.acquired_at, l.renewed_at, l.expires_at, l.ttl_ms, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL THEN NULL ELSE {seconds_left} END "
        "AS seconds_left, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL OR l.expires_at <= {d.now} THEN 1 ELSE 0 END "
        "AS expired, "
        "l.handover_to, l.transitions, "
        "h.role AS holder_role, h.app_healthy AS holder_app_healthy, h.url AS holder_url, "
        "h.last_seen AS holder_last_seen, "
        f"(SELECT MIN({age}) FROM {node} s WHERE s.cluster_name = l.cluster_name "
        "AND (l.holder_node IS NULL OR s.node_name <> l.holder_node)) AS standby_last_seen_age_s, "
        "l.holder_instance, "  # new columns only ever at the end: PostgreSQL's OR REPLACE keeps the grants then
        # schema v3: the control state, and its times on the database clock
        "l.switchover_to, l.switchover_due_at, l.switchover_by, l.switchover_requested_at, "
        "l.maintenance_since, l.maintenance_by, l.disabled_since, l.disabled_by, "
        "l.failover_off_since, l.failover_off_reason, "
        f"({d.ms_until('l.switchover_due_at')} / 1000.0) AS switchover_due_in_s, "
        f"({d.ms_between('l.maintenance_since', d.now)} / 1000.0) AS maintenance_for_s, "
        f"({d.ms_between('l.disabled_since', d.now)} / 1000.0) AS disabled_for_s, "
        f"({d.ms_between('l.failover_off_since', d.now)} / 1000.0) AS failover_off_for_s, "
        "l.switchover_id "
        f"FROM {lease} l LEFT JOIN {node} h "
        "ON h.cluster_name = l.cluster_name AND h.node_name = l.holder_node"
    )


def _v1(d: Dialect, schema: str | None) -> list[str]:
    ts, name = d.ts_type, d.name_type
    t = {k: qualify(k, schema) for k in ("fos_schema", "fos_lease", "fos_node", "fos_event")}
    mysql_event_index = ", INDEX fos_event_cluster_id (cluster_name, id)" if d.name == "mysql" else ""
    v1 = [
        d.create_table(t["fos_schema"], f"version INTEGER NOT NULL PRIMARY KEY, applied_at {ts} NOT NULL"),
        d.create_table(
            t["fos_lease"],
            f"cluster_name {name} NOT NULL PRIMARY KEY, holder_node {name} NULL, epoch BIGINT NOT NULL, "
            f"acquired_at {ts} NULL, renewed_at {ts} NULL, expires_at {ts} NULL, ttl_ms INTEGER NULL, "
            f"handover_to {name} NULL, transitions BIGINT NOT NULL",
        ),
        d.create_table(
            t["fos_node"],
            f"cluster_name {name} NOT NULL, node_name {name} NOT NULL, role VARCHAR(32) NOT NULL, "
            f"app_healthy {d.bool_type} NULL, url VARCHAR(512) NULL, agent_version VARCHAR(32) NULL, "
            f"last_seen {ts} NOT NULL, PRIMARY KEY (cluster_name, node_name)",
        ),
        d.create_table(
            t["fos_event"],
            f"{d.id_column}, cluster_name {name} NOT NULL, at {ts} NOT NULL, node_name {name} NULL, "
            f"kind VARCHAR(32) NOT NULL, epoch BIGINT NULL, detail {d.text_type} NULL{mysql_event_index}",
        ),
    ]
    if d.name != "mysql":
        v1.append(d.create_index("fos_event_cluster_id", "fos_event", "cluster_name, id", schema))
    return v1


def _v2(d: Dialect, schema: str | None) -> list[str]:
    """Instance ids in the lease and node rows; case-sensitive names where v1 databases folded case."""
    instance = f"{d.name_type} NULL"
    v2 = [
        d.add_column("fos_lease", "holder_instance", instance, schema),
        d.add_column("fos_node", "instance_id", instance, schema),
    ]
    if d.name == "mysql":  # v1 used the database's default collation, case-insensitive on most servers
        for table, columns in _NAME_COLUMNS.items():
            mods = ", ".join(f"MODIFY {c} {d.name_type} {'NOT NULL' if nn else 'NULL'}" for c, nn in columns)
            v2.append(f"ALTER TABLE {qualify(table, schema)} {mods}")
    if d.name == "mssql":  # key columns cannot be altered in place: lease/upgrade.py retypes those
        for table, columns in _NAME_COLUMNS.items():
            for column, not_null in columns:
                if not not_null:
                    v2.append(f"ALTER TABLE {qualify(table, schema)} ALTER COLUMN {column} {d.name_type} NULL")
    return v2


def _v3(d: Dialect, schema: str | None) -> list[str]:
    """The operator's intent and the policy state beside the lease (switchover, maintenance, disabled, anti-flap)
    and what each agent acts on. All NULL-able without defaults: adding them is cheap and changes no lease."""
    name, ts = f"{d.name_type} NULL", f"{d.ts_type} NULL"

    def text(n: int) -> str:
        # Operators' user names may be in any script (and contain emoji): NVARCHAR on SQL Server; on MariaDB the
        # database's default character set may be latin1 or 3-byte utf8, so utf8mb4 explicitly.
        if d.name == "mssql":
            return f"NVARCHAR({n}) NULL"
        return f"VARCHAR({n}) CHARACTER SET utf8mb4 NULL" if d.name == "mysql" else f"VARCHAR({n}) NULL"

    lease_columns = (
        ("switchover_to", name),
        ("switchover_due_at", ts),
        ("switchover_by", text(BY_MAX)),
        ("switchover_requested_at", ts),
        ("switchover_id", "BIGINT NULL"),  # the request's number: each request takes the next one
        ("maintenance_since", ts),
        ("maintenance_by", text(BY_MAX)),
        ("disabled_since", ts),
        ("disabled_by", text(BY_MAX)),
        ("failover_off_since", ts),
        ("failover_off_reason", text(REASON_MAX)),
    )
    v3 = [
        *(d.add_column("fos_lease", column, type_, schema) for column, type_ in lease_columns),
        d.add_column("fos_node", "sees", text(64), schema),
    ]
    if d.name == "mysql":  # event details carry operators' names since v3; v1 created them in the default charset
        v3.append(f"ALTER TABLE {qualify('fos_event', schema)} MODIFY detail {d.text_type} NULL")
    return v3


def migrations(d: Dialect, schema: str | None = None) -> dict[int, list[str]]:
    """Statements of each schema version, in order. Each statement is idempotent on its own (or, for an added
    column on MySQL and SQLite, fails with a duplicate-column error that init-db tolerates). The view is
    (re)created after the last version only: it names the columns of every version."""
    view = d.create_view(qualify("fos_lease_status", schema), _status_view_select(d, schema))
    return {1: _v1(d, schema), 2: _v2(d, schema), 3: [*_v3(d, schema), *view], OUTBOX_VERSION: outbox_v4(d, schema)}


def record_version_sql(d: Dialect, schema: str | None = None) -> str:
    return f"INSERT INTO {qualify('fos_schema', schema)} (version, applied_at) VALUES (?, {d.now})"
