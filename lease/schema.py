"""The fos schema, versioned so later releases can migrate it. `fos init-db` applies what is missing.

Tables (one lease row per cluster, one node row per agent, an append-only event history) and the view
`fos_lease_status` that a DBA reads with plain SQL. There are deliberately no triggers on fos_lease: they would
change the rowcount that every compare-and-set is judged by.
"""

from __future__ import annotations

from .dialects import Dialect

SCHEMA_VERSION = 1


def _status_view_select(d: Dialect) -> str:
    seconds_left = f"({d.ms_until('l.expires_at')} / 1000.0)"
    age = f"({d.ms_between('s.last_seen', d.now)} / 1000.0)"
    return (
        "SELECT l.cluster_name, l.holder_node, l.epoch, l.acquired_at, l.renewed_at, l.expires_at, l.ttl_ms, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL THEN NULL ELSE {seconds_left} END "
        "AS seconds_left, "
        f"CASE WHEN l.holder_node IS NULL OR l.expires_at IS NULL OR l.expires_at <= {d.now} THEN 1 ELSE 0 END "
        "AS expired, "
        "l.handover_to, l.transitions, "
        "h.role AS holder_role, h.app_healthy AS holder_app_healthy, h.url AS holder_url, "
        "h.last_seen AS holder_last_seen, "
        f"(SELECT MIN({age}) FROM fos_node s WHERE s.cluster_name = l.cluster_name "
        "AND (l.holder_node IS NULL OR s.node_name <> l.holder_node)) AS standby_last_seen_age_s "
        "FROM fos_lease l LEFT JOIN fos_node h "
        "ON h.cluster_name = l.cluster_name AND h.node_name = l.holder_node"
    )


def migrations(d: Dialect) -> dict[int, list[str]]:
    """Statements of each schema version, in order. Each statement is idempotent on its own."""
    ts, name = d.ts_type, "VARCHAR(64)"
    mysql_event_index = ", INDEX fos_event_cluster_id (cluster_name, id)" if d.name == "mysql" else ""
    v1 = [
        d.create_table("fos_schema", f"version INTEGER NOT NULL PRIMARY KEY, applied_at {ts} NOT NULL"),
        d.create_table(
            "fos_lease",
            f"cluster_name {name} NOT NULL PRIMARY KEY, holder_node {name} NULL, epoch BIGINT NOT NULL, "
            f"acquired_at {ts} NULL, renewed_at {ts} NULL, expires_at {ts} NULL, ttl_ms INTEGER NULL, "
            f"handover_to {name} NULL, transitions BIGINT NOT NULL",
        ),
        d.create_table(
            "fos_node",
            f"cluster_name {name} NOT NULL, node_name {name} NOT NULL, role VARCHAR(32) NOT NULL, "
            f"app_healthy {d.bool_type} NULL, url VARCHAR(512) NULL, agent_version VARCHAR(32) NULL, "
            f"last_seen {ts} NOT NULL, PRIMARY KEY (cluster_name, node_name)",
        ),
        d.create_table(
            "fos_event",
            f"{d.id_column}, cluster_name {name} NOT NULL, at {ts} NOT NULL, node_name {name} NULL, "
            f"kind VARCHAR(32) NOT NULL, epoch BIGINT NULL, detail {d.text_type} NULL{mysql_event_index}",
        ),
    ]
    if d.name != "mysql":
        v1.append(d.create_index("fos_event_cluster_id", "fos_event", "cluster_name, id"))
    v1 += d.create_view("fos_lease_status", _status_view_select(d))
    return {1: v1}


def record_version_sql(d: Dialect) -> str:
    return f"INSERT INTO fos_schema (version, applied_at) VALUES (?, {d.now})"
