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
# The control state (schema v3) read with the lease in the same SELECT: ages and the due time on the DB clock.
CONTROL_COLUMNS = (
    "switchover_to, {due_in} AS switchover_due_in_ms, switchover_by, {requested_age} AS switchover_age_ms, "
    "{maintenance_age} AS maintenance_ms, maintenance_by, {disabled_age} AS disabled_ms, disabled_by, "
    "{failover_off_age} AS failover_off_ms, failover_off_reason, switchover_id"
)
BY_MAX, REASON_MAX = 200, 400  # switchover_by / maintenance_by / disabled_by, failover_off_reason
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
    "switchover_to",
    "switchover_due_at",
    "switchover_by",
    "switchover_requested_at",
    "maintenance_since",
    "maintenance_by",
    "disabled_since",
    "disabled_by",
    "failover_off_since",
    "failover_off_reason",
    "switchover_due_in_s",
    "maintenance_for_s",
    "disabled_for_s",
    "failover_off_for_s",
    "switchover_id",
)


@dataclass(frozen=True)
class Statements:
    read: str  # params: cluster
    insert_if_missing: str  # params: cluster (once, or twice on mssql)
    # params: node, node, instance, ttl_ms, ttl_ms, cluster, expected_epoch, node x 7, instance
    acquire: str
    # params: node, node, None, ttl_ms, ttl_ms, cluster, expected_epoch, node x 7
    acquire_without_instance: str
    renew: str  # params: ttl_ms, ttl_ms, cluster, node, epoch
    release: str  # params: node, cluster, node, epoch
    handover: str  # params: to, reserve_ms, reserve_ms, cluster, node, epoch, to
    handover_request: str  # params: to, reserve_ms, reserve_ms, cluster, node, epoch, to, request_id
    request_switchover: str  # params: to, due_in_ms, by, cluster
    cancel_switchover: str  # params: cluster
    cancel_switchover_request: str  # params: cluster, request_id
    maintenance_on: str  # params: by, cluster
    maintenance_off: str  # params: cluster
    disable: str  # params: by, cluster
    enable: str  # params: cluster
    failover_off: str  # params: reason, cluster
    insert_event: str  # params: cluster, node, kind, epoch, detail
    list_events: str  # params: cluster, since_id (limit is inlined as a validated integer)
    list_events_since: str  # params: cluster, since_id, since_ms
    update_node: str  # params: role, app_healthy, url, agent_version, instance, sees, cluster, node
    insert_node: str  # params: cluster, node, role, app_healthy, url, agent_version, instance, sees
    list_nodes: str  # params: cluster
    status: str  # params: cluster
    schema_version: str
    lease_triggers: str  # enabled triggers on fos_lease, one name per row
    server_version: str | None  # mssql: product version and engine edition


def build(d: Dialect, schema: str | None = None, events_limit: int = 50) -> Statements:
    now, p = d.now, d.name_param
    lease, event, node_t = (qualify(t, schema) for t in ("fos_lease", "fos_event", "fos_node"))
    # Succeeds only if nobody acquired since we read `expected_epoch`; the control state allows it (never while
    # disabled; during maintenance or with failover off only the holder's node, or the node that released it: the
    # release statement leaves it in handover_to then); and the lease is free (a handover
    # reservation only for its target), expired by the database clock, or already this node's from this very
    # agent process (a restarted process resumes at once; a clone with the same node name must wait for the
    # expiry). The epoch always moves on. lease.model.LeaseState.acquire_refusal states the same rule.
    acquire_head = (
        f"UPDATE {lease} SET "
        f"transitions = transitions + CASE WHEN holder_node IS NOT NULL AND holder_node = {p} THEN 0 ELSE 1 END, "
        f"holder_node = {p}, holder_instance = {p}, epoch = epoch + 1, acquired_at = {now}, renewed_at = {now}, "
        f"expires_at = {d.plus_ms('?')}, ttl_ms = ?, handover_to = NULL "
        f"WHERE cluster_name = {p} AND epoch = ? "
        "AND disabled_since IS NULL "
        f"AND (maintenance_since IS NULL OR holder_node = {p} OR (holder_node IS NULL AND handover_to = {p})) "
        f"AND (failover_off_since IS NULL OR holder_node = {p} OR (holder_node IS NULL AND handover_to = {p})) "
        f"AND ((holder_node IS NULL AND (handover_to IS NULL OR handover_to = {p} OR expires_at IS NULL "
        f"OR expires_at <= {now})) "
        f"OR expires_at IS NULL OR expires_at <= {now} OR (holder_node = {p} AND "
    )
    ago = d.ms_between  # (a, b): milliseconds from a to b
    control_columns = CONTROL_COLUMNS.format(
        due_in=d.ms_until("switchover_due_at"),
        requested_age=ago("switchover_requested_at", now),
        maintenance_age=ago("maintenance_since", now),
        disabled_age=ago("disabled_since", now),
        failover_off_age=ago("failover_off_since", now),
    )
    # switchover_id stays: the next request takes the next number, so a holder's request_id never matches a newer one
    no_switchover = (
        "switchover_to = NULL, switchover_due_at = NULL, switchover_by = NULL, switchover_requested_at = NULL"
    )
    handover = (
        f"UPDATE {lease} SET holder_node = NULL, holder_instance = NULL, handover_to = {p}, "
        f"expires_at = {d.plus_ms('CASE WHEN ttl_ms < ? THEN ttl_ms ELSE ? END')}, renewed_at = {now}, "
        f"transitions = transitions + 1, {no_switchover} "
        f"WHERE cluster_name = {p} AND holder_node = {p} AND epoch = ? AND expires_at > {now} "
        f"AND switchover_requested_at IS NOT NULL AND switchover_to = {p} "
        "AND disabled_since IS NULL AND maintenance_since IS NULL AND failover_off_since IS NULL"
    )
    cancel = f"UPDATE {lease} SET {no_switchover} WHERE cluster_name = {p} AND switchover_requested_at IS NOT NULL"
    events = f"id, at, node_name, kind, epoch, detail FROM {event} WHERE cluster_name = {p} AND id > ?"
    return Statements(
        read=(
            f"SELECT {LEASE_COLUMNS.format(remaining=d.ms_until('expires_at'))}, {control_columns} "
            f"FROM {lease} WHERE cluster_name = {p}"
        ),
        insert_if_missing=d.insert_lease_if_missing(schema),
        acquire=acquire_head + f"holder_instance = {p}))",
        acquire_without_instance=acquire_head + "holder_instance IS NULL))",
        # A renewal never revives an expired lease: once the database has let the standby in, it stays in.
        renew=(
            f"UPDATE {lease} SET renewed_at = {now}, expires_at = {d.plus_ms('?')}, ttl_ms = ? "
            f"WHERE cluster_name = {p} AND holder_node = {p} AND epoch = ? AND expires_at > {now}"
        ),
        # expires_at = now, so a standby waiting for the expiry is not kept waiting by a lease nobody holds.
        # During maintenance or with failover off nobody else may acquire: the releasing node stays in handover_to,
        # so it (restarted, or back from a step-down) may take the lease back, and the cluster is not left with
        # nobody allowed to serve. handover_to is assigned first: MySQL evaluates SET from left to right.
        release=(
            f"UPDATE {lease} SET handover_to = CASE WHEN maintenance_since IS NOT NULL "
            f"OR failover_off_since IS NOT NULL THEN {p} ELSE handover_to END, "
            f"holder_node = NULL, holder_instance = NULL, renewed_at = {now}, expires_at = {now}, "
            "transitions = transitions + 1 "
            f"WHERE cluster_name = {p} AND holder_node = {p} AND epoch = ?"
        ),
        # The holder, having let go of the IP and the app, releases to `to`: free only for `to` until now +
        # reserve_ms (at most the lease's own ttl), then for everyone (acquire's handover_to branch). Never from an
        # expired lease: that one is everyone's already, and a reservation would keep the others out longer than a
        # failover. Only on the pending request to `to` (and, with a request id, that very request) and while the
        # control state lets `to` acquire: a cancel, `maintenance on`, a disable or failover-off between the
        # holder's read and this statement makes it change nothing, and the holder keeps its lease.
        handover=handover,
        handover_request=handover + " AND switchover_id = ?",
        # Not while the cluster is disabled, in maintenance, or with failover off: the target could not acquire
        # the handed-over lease then (the acquire gates), and nobody would serve.
        request_switchover=(
            f"UPDATE {lease} SET switchover_to = {p}, switchover_due_at = {d.plus_ms('?')}, switchover_by = ?, "
            f"switchover_requested_at = {now}, switchover_id = COALESCE(switchover_id, 0) + 1 "
            f"WHERE cluster_name = {p} AND switchover_requested_at IS NULL "
            "AND disabled_since IS NULL AND maintenance_since IS NULL AND failover_off_since IS NULL"
        ),
        cancel_switchover=cancel,
        cancel_switchover_request=cancel + " AND switchover_id = ?",
        # Only on a held, unexpired lease and not while a switchover is pending: maintenance keeps everyone but
        # the holder's node out of the lease (the acquire gate), so on a free lease or a handed-over one nobody
        # would serve until it is turned off.
        maintenance_on=(
            f"UPDATE {lease} SET maintenance_since = {now}, maintenance_by = ? "
            f"WHERE cluster_name = {p} AND maintenance_since IS NULL AND switchover_requested_at IS NULL "
            f"AND holder_node IS NOT NULL AND expires_at > {now}"
        ),
        maintenance_off=(
            f"UPDATE {lease} SET maintenance_since = NULL, maintenance_by = NULL "
            f"WHERE cluster_name = {p} AND maintenance_since IS NOT NULL"
        ),
        # A pending switchover goes with it, in the same statement: its target could not acquire while disabled.
        disable=(
            f"UPDATE {lease} SET disabled_since = {now}, disabled_by = ?, {no_switchover} "
            f"WHERE cluster_name = {p} AND disabled_since IS NULL"
        ),
        # Enabling also clears an anti-flap trip: `fos enable` is the one way to turn automatic failover on again.
        enable=(
            f"UPDATE {lease} SET disabled_since = NULL, disabled_by = NULL, failover_off_since = NULL, "
            f"failover_off_reason = NULL WHERE cluster_name = {p} "
            "AND (disabled_since IS NOT NULL OR failover_off_since IS NOT NULL)"
        ),
        failover_off=(
            f"UPDATE {lease} SET failover_off_since = {now}, failover_off_reason = ? "
            f"WHERE cluster_name = {p} AND failover_off_since IS NULL"
        ),
        insert_event=(
            f"INSERT INTO {event} (cluster_name, at, node_name, kind, epoch, detail) VALUES ({p}, {now}, {p}, ?, ?, ?)"
        ),
        list_events=d.limit(f"{events} ORDER BY id DESC", str(int(events_limit))),
        list_events_since=d.limit(f"{events} AND at > {d.ms_ago('?')} ORDER BY id DESC", str(int(events_limit))),
        update_node=(
            f"UPDATE {node_t} SET role = ?, app_healthy = ?, url = ?, agent_version = ?, instance_id = {p}, "
            f"sees = ?, last_seen = {now} WHERE cluster_name = {p} AND node_name = {p}"
        ),
        insert_node=(
            f"INSERT INTO {node_t} (cluster_name, node_name, role, app_healthy, url, agent_version, instance_id, "
            f"sees, last_seen) VALUES ({p}, {p}, ?, ?, ?, ?, {p}, ?, {now})"
        ),
        list_nodes=(
            "SELECT node_name, role, app_healthy, url, agent_version, "
            f"{d.ms_between('last_seen', now)} AS age_ms, instance_id, sees "
            f"FROM {node_t} WHERE cluster_name = {p} ORDER BY node_name"
        ),
        status=(
            f"SELECT {', '.join('holder_node' if c == 'holder' else c for c in STATUS_COLUMNS)} "
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


def count_events_sql(d: Dialect, schema: str | None, kinds: int) -> str:
    """How many events of `kinds` kinds the cluster has within a look-back. Params: cluster, within_ms, kind x
    kinds (at least one)."""
    if kinds < 1:
        raise ValueError("count at least one kind of event")
    markers = ", ".join("?" * kinds)
    return (
        f"SELECT COUNT(*) FROM {qualify('fos_event', schema)} WHERE cluster_name = {d.name_param} "
        f"AND at > {d.ms_ago('?')} AND kind IN ({markers})"
    )
