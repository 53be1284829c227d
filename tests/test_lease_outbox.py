"""The outbox on real databases over ODBC: exactly one node owns a message, a stale claim is taken over by exactly
one node, and only the owner refreshes, records and marks it sent."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from lease import SqlLeaseStore, get_dialect
from lease.outbox import outbox_statements
from lease.outbox_store import SqlOutboxStore
from tests.conftest import unique
from tests.test_lease_dialects import parse_strict


@pytest.fixture
async def outbox(store: SqlLeaseStore, dialect: str, dsns: dict[str, str]) -> AsyncIterator[SqlOutboxStore]:
    """`store` has applied the schema (with the outbox) to the dialect's database."""
    s = SqlOutboxStore(dsns[dialect], dialect=dialect, call_timeout=5.0)
    yield s
    await s.close()


async def test_exactly_one_of_two_nodes_offering_the_same_message_owns_it(outbox: SqlOutboxStore) -> None:
    cluster = unique("ob")
    results = await asyncio.gather(
        outbox.offer(cluster, "master_node_down.7", "master_node_down", '{"a":1}', "m1"),
        outbox.offer(cluster, "master_node_down.7", "master_node_down", '{"a":2}', "m2"),
    )
    assert sorted(results) == [False, True]
    row = await outbox.read_message(cluster, "master_node_down.7")
    owner = "m1" if results[0] else "m2"
    assert row is not None and row.claimed_by == owner and not row.sent and row.attempts == 1
    assert await outbox.offer(cluster, "master_node_down.8", "master_node_down", "{}", "m2")  # another key: new


async def test_only_the_owner_refreshes_records_and_marks_sent(outbox: SqlOutboxStore) -> None:
    cluster = unique("ob")
    assert await outbox.offer(cluster, "fenced.1", "fenced", "{}", "m1")
    assert not await outbox.touch(cluster, "fenced.1", "m2")
    assert await outbox.touch(cluster, "fenced.1", "m1")
    assert await outbox.record_delivery(cluster, "fenced.1", "m1", frozenset({"webhook.0"}), "mail: timeout", timeout=5)
    assert not await outbox.mark_sent(cluster, "fenced.1", "m2", frozenset({"mail"}))
    assert await outbox.mark_sent(cluster, "fenced.1", "m1", frozenset({"mail", "webhook.0"}))
    row = await outbox.read_message(cluster, "fenced.1")
    assert row is not None and row.sent and row.delivered == {"mail", "webhook.0"}
    assert not await outbox.touch(cluster, "fenced.1", "m1"), "a sent message is nobody's to refresh"
    assert await outbox.stale(cluster, 0, 60_000) == []


async def test_a_stale_claim_is_taken_over_by_exactly_one_node_and_keeps_what_was_delivered(
    outbox: SqlOutboxStore,
) -> None:
    cluster = unique("ob")
    assert await outbox.offer(cluster, "flapping.3", "flapping", '{"k":"v"}', "m1")
    await outbox.record_delivery(cluster, "flapping.3", "m1", frozenset({"webhook.0"}), None, timeout=5)
    assert await outbox.stale(cluster, 400, 60_000) == [], "a fresh claim is not stale"
    assert not await outbox.claim(cluster, "flapping.3", "m2", 400)
    await asyncio.sleep(0.6)
    [row] = await outbox.stale(cluster, 400, 60_000)
    assert (row.key, row.claimed_by, row.delivered, row.body) == ("flapping.3", "m1", {"webhook.0"}, '{"k":"v"}')
    wins = await asyncio.gather(*(outbox.claim(cluster, "flapping.3", n, 400) for n in ("m2", "m3")))
    assert sorted(wins) == [False, True]
    new_owner = "m2" if wins[0] else "m3"
    assert not await outbox.touch(cluster, "flapping.3", "m1"), "the dead sender lost its claim"
    assert await outbox.mark_sent(cluster, "flapping.3", new_owner, frozenset({"mail", "webhook.0"}))
    row2 = await outbox.read_message(cluster, "flapping.3")
    assert row2 is not None and row2.attempts == 2 and row2.claimed_by == new_owner


async def test_old_unsent_messages_are_not_taken_over_and_old_sent_ones_are_purged(outbox: SqlOutboxStore) -> None:
    cluster = unique("ob")
    assert await outbox.offer(cluster, "enabled.1", "enabled", "{}", "m1")
    await asyncio.sleep(0.3)
    assert await outbox.stale(cluster, 0, 100) == [], "created before max_age: left alone"
    assert await outbox.mark_sent(cluster, "enabled.1", "m1", frozenset({"mail"}))
    await asyncio.sleep(0.1)
    assert await outbox.purge_sent(50) >= 1
    assert await outbox.read_message(cluster, "enabled.1") is None


@pytest.mark.parametrize("name", ["postgresql", "mysql", "sqlite", "mssql"])
def test_every_outbox_statement_parses_strictly_in_its_dialect(name: str) -> None:
    d = get_dialect(name)
    built = outbox_statements(d, d.default_schema)
    for f in dataclasses.fields(built):
        sql = getattr(built, f.name)
        parse_strict(sql, {"postgresql": "postgres", "mssql": "tsql"}.get(name, name))
        if name == "mssql":  # names typed like the columns: an index seek, no scan that U-locks the table
            typed = "VALUES (CAST(? AS NVARCHAR(64))" if f.name == "offer" else "cluster_name = CAST(? AS NVARCHAR(64))"
            assert typed in sql or f.name == "purge", f.name
