"""Every statement the lease store sends, built from a dialect. Parameters are always `?` markers.

The lease statements are compare-and-set UPDATEs judged by rowcount == 1: no MERGE, no OUTPUT/RETURNING,
no session locks, no triggers on fos_lease. Every time comparison uses the database clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialects import Dialect


@dataclass(frozen=True)
class Statements:
    read: str  # params: cluster
    insert_if_missing: str  # params: cluster (once, or twice on mssql)
    acquire: str  # params: node, node, ttl_ms, ttl_ms, cluster, expected_epoch, node
    renew: str  # params: ttl_ms, ttl_ms, cluster, node, epoch
    release: str  # params: cluster, node, epoch
    insert_event: str  # params: cluster, node, kind, epoch, detail
    list_events: str  # params: cluster, since_id (limit is inlined as a validated integer)
    update_node: str  # params: role, app_healthy, url, agent_version, cluster, node
    insert_node: str  # params: cluster, node, role, app_healthy, url, agent_version
    list_nodes: str  # params: cluster
    status: str  # params: cluster
    schema_version: str


def build(d: Dialect, events_limit: int = 50) -> Statements:
    now = d.now
    return Statements(
        read=(
            f"SELECT holder_node, epoch, {d.ms_until('expires_at')} AS remaining_ms, ttl_ms, handover_to "
            "FROM fos_lease WHERE cluster_name = ?"
        ),
        insert_if_missing=d.insert_lease_if_missing,
        # Succeeds only if nobody acquired since we read `expected_epoch`, and the lease is free, expired by
        # the database clock, or already ours (a restarted agent resumes). The epoch always moves on.
        acquire=(
            "UPDATE fos_lease SET "
            "transitions = transitions + CASE WHEN holder_node IS NOT NULL AND holder_node = ? THEN 0 ELSE 1 END, "
            f"holder_node = ?, epoch = epoch + 1, acquired_at = {now}, renewed_at = {now}, "
            f"expires_at = {d.plus_ms('?')}, ttl_ms = ?, handover_to = NULL "
            "WHERE cluster_name = ? AND epoch = ? "
            f"AND (holder_node IS NULL OR expires_at IS NULL OR expires_at <= {now} OR holder_node = ?)"
        ),
        # A renewal never revives an expired lease: once the database has let the standby in, it stays in.
        renew=(
            f"UPDATE fos_lease SET renewed_at = {now}, expires_at = {d.plus_ms('?')}, ttl_ms = ? "
            f"WHERE cluster_name = ? AND holder_node = ? AND epoch = ? AND expires_at > {now}"
        ),
        # expires_at = now, so a standby waiting for the expiry is not kept waiting by a lease nobody holds.
        release=(
            f"UPDATE fos_lease SET holder_node = NULL, renewed_at = {now}, expires_at = {now}, "
            "transitions = transitions + 1 "
            "WHERE cluster_name = ? AND holder_node = ? AND epoch = ?"
        ),
        insert_event=(
            f"INSERT INTO fos_event (cluster_name, at, node_name, kind, epoch, detail) VALUES (?, {now}, ?, ?, ?, ?)"
        ),
        list_events=d.limit(
            "id, at, node_name, kind, epoch, detail FROM fos_event WHERE cluster_name = ? AND id > ? ORDER BY id DESC",
            str(int(events_limit)),
        ),
        update_node=(
            f"UPDATE fos_node SET role = ?, app_healthy = ?, url = ?, agent_version = ?, last_seen = {now} "
            "WHERE cluster_name = ? AND node_name = ?"
        ),
        insert_node=(
            "INSERT INTO fos_node (cluster_name, node_name, role, app_healthy, url, agent_version, last_seen) "
            f"VALUES (?, ?, ?, ?, ?, ?, {now})"
        ),
        list_nodes=(
            f"SELECT node_name, role, app_healthy, url, agent_version, {d.ms_between('last_seen', now)} AS age_ms "
            "FROM fos_node WHERE cluster_name = ? ORDER BY node_name"
        ),
        status=(
            "SELECT cluster_name, holder_node, epoch, seconds_left, expired, handover_to, transitions, "
            "holder_role, holder_app_healthy, holder_url, standby_last_seen_age_s "
            "FROM fos_lease_status WHERE cluster_name = ?"
        ),
        schema_version="SELECT MAX(version) FROM fos_schema",
    )
