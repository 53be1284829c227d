"""Every statement the lease store sends, built from a dialect and a schema. Parameters are `?` markers; a None
parameter is never bound but written as NULL into the SQL (inline_nulls), since binding None costs some drivers a
server round trip to describe the parameter. Where None changes a comparison (`= ?` versus `IS NULL`) there are
two statements.

The lease statements are compare-and-set UPDATEs judged by rowcount == 1: no MERGE, no OUTPUT/RETURNING,
no session locks, no triggers on fos_lease. Every time comparison uses the database clock. Object names are
qualified with the schema when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .dialects import Dialect, qualify

LEASE_COLUMNS = "holder_node, epoch, {remaining} AS remaining_ms, ttl_ms, handover_to, holder_instance"
STATUS_COLUMNS = (
    "cluster_name",
    "holder",
    "epoch",
    "seconds_left",
    "expired",
    "handover_to",
    "transitions",
    "holder_role",
    "holder_app_healthy",
    "holder_url",
    "standby_last_seen_age_s",
    "holder_instance",
)


@dataclass(frozen=True)
class Statements:
    read: str  # params: cluster
    insert_if_missing: str  # params: cluster (once, or twice on mssql)
    acquire: str  # params: node, node, instance, ttl_ms, ttl_ms, cluster, expected_epoch, node, instance
    acquire_without_instance: str  # params: node, node, None, ttl_ms, ttl_ms, cluster, expected_epoch, node
    renew: str  # params: ttl_ms, ttl_ms, cluster, node, epoch
    release: str  # params: cluster, node, epoch
    insert_event: str  # params: cluster, node, kind, epoch, detail
    list_events: str  # params: cluster, since_id (limit is inlined as a validated integer)
    update_node: str  # params: role, app_healthy, url, agent_version, instance, cluster, node
    insert_node: str  # params: cluster, node, role, app_healthy, url, agent_version, instance
    list_nodes: str  # params: cluster
    status: str  # params: cluster
    schema_version: str
    lease_triggers: str  # enabled triggers on fos_lease, one name per row
    server_version: str | None  # mssql: product version and engine edition


def build(d: Dialect, schema: str | None = None, events_limit: int = 50) -> Statements:
    now, p = d.now, d.name_param
    lease, event, node_t = (qualify(t, schema) for t in ("fos_lease", "fos_event", "fos_node"))
    # Succeeds only if nobody acquired since we read `expected_epoch`, and the lease is free, expired by the
    # database clock, or already this node's from this very agent process (a restarted process resumes at once;
    # a clone with the same node name must wait for the expiry). The epoch always moves on.
    acquire_head = (
        f"UPDATE {lease} SET "
        f"transitions = transitions + CASE WHEN holder_node IS NOT NULL AND holder_node = {p} THEN 0 ELSE 1 END, "
        f"holder_node = {p}, holder_instance = {p}, epoch = epoch + 1, acquired_at = {now}, renewed_at = {now}, "
        f"expires_at = {d.plus_ms('?')}, ttl_ms = ?, handover_to = NULL "
        f"WHERE cluster_name = {p} AND epoch = ? "
        f"AND (holder_node IS NULL OR expires_at IS NULL OR expires_at <= {now} OR (holder_node = {p} AND "
    )
    return Statements(
        read=f"SELECT {LEASE_COLUMNS.format(remaining=d.ms_until('expires_at'))} FROM {lease} WHERE cluster_name = {p}",
        insert_if_missing=d.insert_lease_if_missing(schema),
        acquire=acquire_head + f"holder_instance = {p}))",
        acquire_without_instance=acquire_head + "holder_instance IS NULL))",
        # A renewal never revives an expired lease: once the database has let the standby in, it stays in.
        renew=(
            f"UPDATE {lease} SET renewed_at = {now}, expires_at = {d.plus_ms('?')}, ttl_ms = ? "
            f"WHERE cluster_name = {p} AND holder_node = {p} AND epoch = ? AND expires_at > {now}"
        ),
        # expires_at = now, so a standby waiting for the expiry is not kept waiting by a lease nobody holds.
        release=(
            f"UPDATE {lease} SET holder_node = NULL, holder_instance = NULL, renewed_at = {now}, expires_at = {now}, "
            "transitions = transitions + 1 "
            f"WHERE cluster_name = {p} AND holder_node = {p} AND epoch = ?"
        ),
        insert_event=(
            f"INSERT INTO {event} (cluster_name, at, node_name, kind, epoch, detail) VALUES ({p}, {now}, {p}, ?, ?, ?)"
        ),
        list_events=d.limit(
            f"id, at, node_name, kind, epoch, detail FROM {event} WHERE cluster_name = {p} AND id > ? ORDER BY id DESC",
            str(int(events_limit)),
        ),
        update_node=(
            f"UPDATE {node_t} SET role = ?, app_healthy = ?, url = ?, agent_version = ?, instance_id = {p}, "
            f"last_seen = {now} WHERE cluster_name = {p} AND node_name = {p}"
        ),
        insert_node=(
            f"INSERT INTO {node_t} (cluster_name, node_name, role, app_healthy, url, agent_version, instance_id, "
            f"last_seen) VALUES ({p}, {p}, ?, ?, ?, ?, {p}, {now})"
        ),
        list_nodes=(
            "SELECT node_name, role, app_healthy, url, agent_version, "
            f"{d.ms_between('last_seen', now)} AS age_ms, instance_id "
            f"FROM {node_t} WHERE cluster_name = {p} ORDER BY node_name"
        ),
        status=(
            "SELECT cluster_name, holder_node, epoch, seconds_left, expired, handover_to, transitions, "
            "holder_role, holder_app_healthy, holder_url, standby_last_seen_age_s, holder_instance "
            f"FROM {qualify('fos_lease_status', schema)} WHERE cluster_name = {p}"
        ),
        schema_version=f"SELECT MAX(version) FROM {qualify('fos_schema', schema)}",
        lease_triggers=d.triggers_on("fos_lease", schema),
        server_version=(
            "SELECT CAST(SERVERPROPERTY('ProductVersion') AS NVARCHAR(128)), "
            "CAST(SERVERPROPERTY('EngineEdition') AS INT)"
            if d.name == "mssql"
            else None
        ),
    )


def inline_nulls(sql: str, params: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """Write NULL into the SQL in place of each `?` whose parameter is None; return the SQL and the rest.

    Markers inside single-quoted literals are not markers. Only for positions where NULL means the same as a bound
    NULL (values, SET, CAST); comparisons with a possibly-None value need their own statement.
    """
    if all(v is not None for v in params):
        return sql, tuple(params)
    out: list[str] = []
    kept: list[Any] = []
    index = 0
    in_literal = False
    for ch in sql:
        if ch == "'":
            in_literal = not in_literal
        elif ch == "?" and not in_literal:
            if index >= len(params):
                raise ValueError(f"more markers than the {len(params)} parameters given")
            value = params[index]
            index += 1
            if value is None:
                out.append("NULL")
                continue
            kept.append(value)
        out.append(ch)
    if index != len(params):
        raise ValueError(f"{len(params)} parameters for {index} markers")
    return "".join(out), tuple(kept)
