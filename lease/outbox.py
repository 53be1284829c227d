"""The notification outbox (schema version 4): one row per notification of a cluster, so that every node may see
an event and still exactly one message goes out.

A row is keyed by (cluster_name, dedup_key). The node whose INSERT succeeds owns the message: it sends it, keeps
its claim fresh (claimed_at) while it tries, records each channel that accepted it (delivered) and finally marks
it sent. A node that finds an unsent row whose claim has not been refreshed for a while (its sender died, or was
stopped) takes it over with one compare-and-set UPDATE, and sends only the channels not yet delivered.

Every change is one autocommit statement judged by its row count; every time is the database's clock. This
module holds the schema and the statements (no driver); lease/outbox_store.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dialects import Dialect, qualify

OUTBOX_VERSION = 4
MAX_BODY = 3900  # the body column is NVARCHAR(4000) on SQL Server


def outbox_v4(d: Dialect, schema: str | None) -> list[str]:
    """Schema version 4: the fos_outbox table (idempotent)."""
    ts, name = d.ts_type, d.name_type
    return [
        d.create_table(
            qualify("fos_outbox", schema),
            f"cluster_name {name} NOT NULL, dedup_key {name} NOT NULL, kind VARCHAR(32) NOT NULL, "
            f"body {d.text_type} NULL, created_at {ts} NOT NULL, claimed_by {name} NULL, claimed_at {ts} NULL, "
            f"sent_at {ts} NULL, attempts INTEGER NOT NULL, delivered VARCHAR(400) NULL, "
            "last_error VARCHAR(400) NULL, PRIMARY KEY (cluster_name, dedup_key)",
        )
    ]


@dataclass(frozen=True)
class OutboxSql:
    offer: str  # cluster, key, kind, body, node
    touch: str  # cluster, key, node
    delivered: str  # delivered, error, cluster, key, node
    sent: str  # delivered, cluster, key, node
    claim: str  # node, cluster, key, -older_ms
    stale: str  # cluster, -older_ms, -max_age_ms
    read: str  # cluster, key
    purge: str  # -keep_ms


def outbox_statements(d: Dialect, schema: str | None) -> OutboxSql:
    """Every statement of the outbox for one dialect and schema; parameters as commented on OutboxSql."""
    t, now, p = qualify("fos_outbox", schema), d.now, d.name_param
    cols = "dedup_key, kind, body, claimed_by, attempts, delivered, sent_at"
    mine = f"WHERE cluster_name = {p} AND dedup_key = {p} AND claimed_by = {p} AND sent_at IS NULL"
    return OutboxSql(
        offer=(
            f"INSERT INTO {t} (cluster_name, dedup_key, kind, body, created_at, claimed_by, claimed_at, attempts) "
            f"VALUES ({p}, {p}, ?, ?, {now}, {p}, {now}, 1)"
        ),
        touch=f"UPDATE {t} SET claimed_at = {now} {mine}",
        delivered=f"UPDATE {t} SET claimed_at = {now}, delivered = ?, last_error = ? {mine}",
        sent=f"UPDATE {t} SET sent_at = {now}, delivered = ?, last_error = NULL {mine}",
        claim=(
            f"UPDATE {t} SET claimed_by = {p}, claimed_at = {now}, attempts = attempts + 1 "
            f"WHERE cluster_name = {p} AND dedup_key = {p} AND sent_at IS NULL AND claimed_at <= {d.plus_ms('?')}"
        ),
        stale=(
            f"SELECT {cols} FROM {t} WHERE cluster_name = {p} AND sent_at IS NULL "
            f"AND claimed_at <= {d.plus_ms('?')} AND created_at >= {d.plus_ms('?')} ORDER BY created_at"
        ),
        read=f"SELECT {cols} FROM {t} WHERE cluster_name = {p} AND dedup_key = {p}",
        purge=f"DELETE FROM {t} WHERE sent_at IS NOT NULL AND sent_at < {d.plus_ms('?')}",
    )
