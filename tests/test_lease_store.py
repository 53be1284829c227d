"""The lease contract, run unchanged against PostgreSQL, MariaDB and SQLite (and MS SQL when configured)
through their real ODBC drivers."""

from __future__ import annotations

import asyncio
import time

import pyodbc
import pytest

from lease import EventKind, InvalidName, LeaseState, ProtocolViolation, SqlLeaseStore
from lease.store import _judge
from tests.conftest import unique


async def wait_until_expired(store: SqlLeaseStore, cluster: str, deadline_s: float = 5.0) -> LeaseState:
    """Poll the database clock until the lease has expired; fail at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        state = await store.read(cluster)
        if not state.held:
            return state
        await asyncio.sleep(max(0.01, (state.remaining_ms or 0) / 1000.0))
    raise AssertionError(f"lease of {cluster} did not expire within {deadline_s}s")


async def test_unknown_cluster_reads_as_free_with_epoch_zero(store: SqlLeaseStore) -> None:
    state = await store.read(unique("c"))
    assert state.holder is None and state.epoch == 0 and not state.held


async def test_first_acquire_gets_epoch_one_and_is_recorded(store: SqlLeaseStore) -> None:
    c = unique("c")
    result = await store.try_acquire(c, "m1", 5000)
    assert result.acquired and result.epoch == 1
    state = await store.read(c)
    assert state.holder == "m1" and state.epoch == 1 and state.ttl_ms == 5000
    assert state.remaining_ms is not None and 4000 < state.remaining_ms <= 5000
    events = await store.list_events(c)
    assert [(e.kind, e.node, e.epoch) for e in events] == [(EventKind.ACQUIRED, "m1", 1)]


async def test_other_node_cannot_take_unexpired_lease(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 5000)
    miss = await store.try_acquire(c, "m2", 5000)
    assert not miss.acquired
    assert miss.seen.holder == "m1" and miss.seen.epoch == 1
    assert miss.seen.remaining_ms is not None and miss.seen.remaining_ms > 0
    assert (await store.read(c)).holder == "m1"


async def test_same_node_resumes_its_lease_with_a_new_epoch(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 5000)
    again = await store.try_acquire(c, "m1", 5000)
    assert again.acquired and again.epoch == 2
    assert (await store.list_events(c, limit=1))[0].kind == EventKind.RESUMED


async def test_renew_extends_expiry_on_the_database_clock(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 1000)
    before = await store.read(c)
    assert await store.renew(c, "m1", got.epoch, 8000)
    after = await store.read(c)
    assert before.remaining_ms is not None and before.remaining_ms <= 1000
    assert after.remaining_ms is not None and 7000 < after.remaining_ms <= 8000
    assert after.epoch == got.epoch


async def test_renew_with_wrong_epoch_or_node_changes_nothing(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 5000)
    assert not await store.renew(c, "m1", got.epoch + 1, 9000)
    assert not await store.renew(c, "m2", got.epoch, 9000)
    state = await store.read(c)
    assert state.remaining_ms is not None and state.remaining_ms <= 5000


async def test_takeover_after_expiry_bumps_epoch_and_is_recorded(store: SqlLeaseStore) -> None:
    c = unique("c")
    first = await store.try_acquire(c, "m1", 300)
    await wait_until_expired(store, c)
    second = await store.try_acquire(c, "m2", 5000)
    assert second.acquired and second.epoch == first.epoch + 1
    assert not await store.renew(c, "m1", first.epoch, 5000)
    newest = (await store.list_events(c, limit=1))[0]
    assert (newest.kind, newest.node, newest.epoch) == (EventKind.TAKEOVER, "m2", 2)


async def test_expired_lease_cannot_be_renewed_even_if_nobody_took_it(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 200)
    await wait_until_expired(store, c)
    assert not await store.renew(c, "m1", got.epoch, 5000)


async def test_release_frees_the_lease_at_once(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 60000)
    assert await store.release(c, "m1", got.epoch, detail="graceful stop")
    state = await store.read(c)
    assert state.holder is None and not state.held
    assert not await store.renew(c, "m1", got.epoch, 5000)
    taken = await store.try_acquire(c, "m2", 5000)
    assert taken.acquired and taken.epoch == 2
    kinds = [e.kind for e in await store.list_events(c)]
    assert kinds == [EventKind.ACQUIRED, EventKind.RELEASED, EventKind.ACQUIRED]


async def test_release_by_a_non_holder_changes_nothing(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 5000)
    assert not await store.release(c, "m2", got.epoch)
    assert not await store.release(c, "m1", got.epoch + 7)
    assert (await store.read(c)).holder == "m1"
    assert len(await store.list_events(c)) == 1


async def test_acquire_with_a_stale_expected_state_loses_the_compare_and_set(store: SqlLeaseStore) -> None:
    c = unique("c")
    stale = await store.read(c)
    await store.ensure_cluster(c)
    await store.try_acquire(c, "m1", 5000)
    lost = await store.try_acquire(c, "m2", 5000, expected=LeaseState(c, None, stale.epoch, -1))
    assert not lost.acquired
    assert lost.seen.holder == "m1" and lost.seen.epoch == 1
    assert (await store.read(c)).holder == "m1"


async def test_node_rows_are_upserted_and_listed(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.record_node(c, "m1", "standby", None, "http://m1:8080", "0.1.0")
    await store.record_node(c, "m1", "active", True, "http://m1:8080", "0.1.0")
    await store.record_node(c, "m2", "standby", False, None, "0.1.0")
    nodes = {n.node: n for n in await store.list_nodes(c)}
    assert set(nodes) == {"m1", "m2"}
    assert nodes["m1"].role == "active" and nodes["m1"].app_healthy is True
    assert nodes["m2"].app_healthy is False and nodes["m2"].url is None
    age = nodes["m1"].last_seen_age_s
    assert age is not None and 0 <= age < 5


async def test_events_are_listed_newest_first_with_limit_and_since(store: SqlLeaseStore) -> None:
    c = unique("c")
    for i in range(5):
        await store.record_event(c, "m1", EventKind.NOTE, None, f"note {i}")
    events = await store.list_events(c, limit=3)
    assert [e.detail for e in events] == ["note 4", "note 3", "note 2"]
    newer = await store.list_events(c, since_id=events[1].id)
    assert [e.detail for e in newer] == ["note 4"]
    assert all(e.at.tzinfo is not None for e in events)


async def test_status_view_shows_holder_seconds_left_and_standby_age(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 30000)
    await store.record_node(c, "m1", "active", True, "http://m1", "0.1.0")
    await store.record_node(c, "m2", "standby", None, "http://m2", "0.1.0")
    row = await store.status_row(c)
    assert row is not None
    assert row["holder"] == "m1" and row["epoch"] == 1 and row["expired"] is False
    assert 25 < row["seconds_left"] <= 30
    assert row["holder_role"] == "active" and row["holder_app_healthy"] is True
    assert 0 <= row["standby_last_seen_age_s"] < 5


@pytest.mark.parametrize("bad", ["x'; DROP TABLE fos_lease; --", "a b", "", "-lead", "ü", "x" * 65, "m1\n"])
async def test_injection_looking_names_are_refused_and_change_nothing(store: SqlLeaseStore, bad: str) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 5000)
    with pytest.raises(InvalidName, match="name"):
        await store.try_acquire(bad, "m1", 5000)
    with pytest.raises(InvalidName, match="node name"):
        await store.try_acquire(c, bad, 5000)
    with pytest.raises(InvalidName):
        await store.record_node(c, bad, "standby", None, None, None)
    state = await store.read(c)
    assert state.holder == "m1" and state.epoch == 1
    assert [e.node for e in await store.list_events(c)] == ["m1"]


def test_rowcount_other_than_zero_or_one_is_a_protocol_violation() -> None:
    assert _judge(1, "x") is True
    assert _judge(0, "x") is False
    with pytest.raises(ProtocolViolation, match="NOCOUNT"):
        _judge(-1, "x")
    with pytest.raises(ProtocolViolation):
        _judge(2, "x")


async def test_max_connections_bounds_how_many_connections_concurrent_calls_open(
    dialect: str, dsns: dict[str, str], store: SqlLeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lease.calls as store_module

    opened = 0
    real_open = store_module.open_connection

    async def counting_open(*args: object, **kwargs: object) -> object:
        nonlocal opened
        opened += 1
        return await real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "open_connection", counting_open)
    bounded = SqlLeaseStore(dsns[dialect], dialect=dialect, max_connections=2, call_timeout=10)
    await bounded.read(unique("c"))  # the first call also checks the schema version once
    await asyncio.gather(*(bounded.read(unique("c")) for _ in range(10)))
    assert opened == 2
    assert bounded.statements_sent == 2 + 10  # one round trip per read
    await bounded.close()


async def test_acquire_with_an_expected_state_creates_the_missing_row(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 5000, expected=LeaseState.missing(c))
    assert got.acquired and got.epoch == 1
    assert (await store.read(c)).holder == "m1"


async def test_acquire_with_an_expected_state_that_wrongly_claims_a_row_still_creates_it(store: SqlLeaseStore) -> None:
    c = unique("c")
    # What a caller that built its own state (epoch 0, never held) passes; the row does not exist.
    got = await store.try_acquire(c, "m1", 5000, expected=LeaseState(c, None, 0, None))
    assert got.acquired and got.epoch == 1
    state = await store.read(c)
    assert state.row_exists and state.holder == "m1"


async def test_a_missing_row_reads_as_missing(store: SqlLeaseStore) -> None:
    c = unique("c")
    assert not (await store.read(c)).row_exists
    await store.ensure_cluster(c)
    assert (await store.read(c)).row_exists


async def test_another_instance_of_the_same_node_cannot_take_an_unexpired_lease(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 5000, instance="inst-a")
    assert got.acquired and (await store.read(c)).holder_instance == "inst-a"
    clone = await store.try_acquire(c, "m1", 5000, instance="inst-b")
    assert not clone.acquired and clone.seen.holder_instance == "inst-a"
    # Even with the state it read as `expected`: the compare-and-set itself refuses.
    state = await store.read(c)
    forced = await store.try_acquire(c, "m1", 5000, expected=LeaseState(c, None, state.epoch, -1), instance="inst-b")
    assert not forced.acquired
    legacy = await store.try_acquire(c, "m1", 5000)  # an agent without an instance id
    assert not legacy.acquired
    after = await store.read(c)
    assert (after.holder_instance, after.epoch) == ("inst-a", 1)


async def test_the_same_instance_resumes_its_unexpired_lease(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 5000, instance="inst-a")
    again = await store.try_acquire(c, "m1", 5000, instance="inst-a")
    assert again.acquired and again.epoch == 2
    assert (await store.list_events(c, limit=1))[0].kind == EventKind.RESUMED


async def test_a_lease_written_without_an_instance_is_resumed_only_without_one(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 5000)
    assert not (await store.try_acquire(c, "m1", 5000, instance="inst-a")).acquired
    assert (await store.try_acquire(c, "m1", 5000)).acquired


async def test_after_expiry_any_instance_takes_the_lease(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 300, instance="inst-a")
    await wait_until_expired(store, c)
    got = await store.try_acquire(c, "m1", 5000, instance="inst-b")
    assert got.acquired and got.epoch == 2
    assert (await store.read(c)).holder_instance == "inst-b"


async def test_release_clears_the_holder_instance(store: SqlLeaseStore) -> None:
    c = unique("c")
    got = await store.try_acquire(c, "m1", 5000, instance="inst-a")
    assert await store.release(c, "m1", got.epoch)
    state = await store.read(c)
    assert state.holder is None and state.holder_instance is None


async def test_node_rows_carry_the_instance(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.record_node(c, "m1", "standby", None, None, None, instance="inst-a")
    await store.record_node(c, "m2", "standby", None, None, None)
    nodes = {n.node: n for n in await store.list_nodes(c)}
    assert nodes["m1"].instance == "inst-a" and nodes["m2"].instance is None
    await store.record_node(c, "m1", "active", True, None, None, instance="inst-b")
    assert {n.node: n for n in await store.list_nodes(c)}["m1"].instance == "inst-b"


async def test_status_view_shows_the_holder_instance(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.try_acquire(c, "m1", 30000, instance="inst-a")
    row = await store.status_row(c)
    assert row is not None and row["holder_instance"] == "inst-a"


async def test_names_differing_only_in_case_are_different_nodes_and_never_both_hold(store: SqlLeaseStore) -> None:
    c = unique("c")
    assert (await store.try_acquire(c, "M1", 5000)).acquired
    lower = await store.try_acquire(c, "m1", 5000)
    assert not lower.acquired and lower.seen.holder == "M1"
    assert not await store.renew(c, "m1", 1, 5000)
    assert not await store.release(c, "m1", 1)
    assert (await store.read(c)).holder == "M1"
    # Clusters and node rows that differ only in case are separate rows.
    assert not (await store.read(c.upper())).row_exists
    await store.record_node(c, "M1", "active", True, None, None)
    await store.record_node(c, "m1", "standby", None, None, None)
    assert [(n.node, n.role) for n in await store.list_nodes(c)] == [("M1", "active"), ("m1", "standby")]


async def test_none_values_are_stored_as_null(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.record_event(c, None, EventKind.NOTE, None, None)
    got = await store.try_acquire(c, "m1", 5000)
    await store.release(c, "m1", got.epoch)
    events = await store.list_events(c)
    note = events[-1]
    assert (note.node, note.epoch, note.detail) == (None, None, None)
    assert events[0].kind == EventKind.RELEASED and events[0].detail is None


async def test_preflight_creates_the_missing_row_and_passes_on_a_clean_schema(store: SqlLeaseStore) -> None:
    c = unique("c")
    await store.preflight(c)
    state = await store.read(c)
    assert state.row_exists and state.epoch == 0 and state.holder is None
    await store.preflight(c)  # idempotent


async def test_long_non_ascii_text_round_trips_unchanged(store: SqlLeaseStore) -> None:
    # MariaDB Connector/ODBC 3.1 corrupts (or refuses) UTF-16 parameters of 128 characters and more, which pyodbc
    # sends in pieces: the store sends text to MariaDB/MySQL as UTF-8 instead.
    c = unique("text")
    detail = "health check failed: " + "é€" * 150 + " (exit 3)"
    await store.record_event(c, "m1", "note", None, detail)
    url = "http://m1.example.com/" + "ü" * 200
    await store.record_node(c, "m1", "standby", None, url, "0.3")
    assert (await store.list_events(c))[0].detail == detail
    assert (await store.list_nodes(c))[0].url == url


# ---- ages beyond 32-bit milliseconds (24.8 days) ---------------------------------------------------------------

DAYS = 25
_DAYS_AGO = {
    "postgresql": f"(statement_timestamp() AT TIME ZONE 'UTC') - INTERVAL '{DAYS} days'",
    "mysql": f"DATE_SUB(UTC_TIMESTAMP(6), INTERVAL {DAYS} DAY)",
    "sqlite": f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-{DAYS} days')",
    "mssql": f"DATEADD(day, -{DAYS}, SYSUTCDATETIME())",
}
_DAYS_MS = DAYS * 86_400_000


def _age(dsn: str, dialect: str, table: str, columns: tuple[str, ...], cluster: str) -> None:
    """Move `columns` of the cluster's rows in `table` 25 days into the past, on the database clock."""
    conn = pyodbc.connect(dsn, autocommit=True)
    try:
        sets = ", ".join(f"{c} = {_DAYS_AGO[dialect]}" for c in columns)
        conn.cursor().execute(f"UPDATE {table} SET {sets} WHERE cluster_name = ?", (cluster,)).close()
    finally:
        conn.close()


def _about_days_ago(ms: float | None) -> bool:
    return ms is not None and -_DAYS_MS - 60_000 < ms < -_DAYS_MS + 60_000


async def test_a_lease_that_expired_25_days_ago_reads_as_expired_and_is_taken_over(
    store: SqlLeaseStore, dialect: str, dsns: dict[str, str]
) -> None:
    # Every node was powered off 25 days ago (the holder crashed: its row still names it); now they boot again.
    c = unique("old")
    assert (await store.try_acquire(c, "m1", 10_000, instance="i1")).acquired
    _age(dsns[dialect], dialect, "fos_lease", ("expires_at",), c)
    state = await store.read(c)
    assert _about_days_ago(state.remaining_ms) and not state.held, state.remaining_ms
    assert state.acquire_refusal("m2", "i2") is None
    assert (await store.try_acquire(c, "m2", 10_000, instance="i2")).acquired
    row = await store.status_row(c)
    assert row is not None and row["holder"] == "m2" and 0 < row["seconds_left"] <= 10


async def test_a_reservation_that_ended_25_days_ago_is_no_reservation(
    store: SqlLeaseStore, dialect: str, dsns: dict[str, str]
) -> None:
    c = unique("old")
    got = await store.try_acquire(c, "m1", 10_000, instance="i1")
    assert await store.request_switchover(c, "m2", 0, "op@h")
    assert await store.handover(c, "m1", got.epoch, "m2", 10_000)
    _age(dsns[dialect], dialect, "fos_lease", ("expires_at",), c)
    state = await store.read(c)
    assert state.reserved_for is None and _about_days_ago(state.remaining_ms), state.remaining_ms
    assert (await store.try_acquire(c, "m3", 10_000, instance="i3")).acquired


async def test_a_node_row_and_control_state_25_days_old_read_their_age(
    store: SqlLeaseStore, dialect: str, dsns: dict[str, str]
) -> None:
    c = unique("old")
    assert (await store.try_acquire(c, "m1", 10_000, instance="i1")).acquired
    await store.record_node(c, "m2", "standby", None, None, "0.3", instance="i2", sees="")
    assert await store.set_maintenance(c, True, "op@h")
    _age(dsns[dialect], dialect, "fos_node", ("last_seen",), c)
    _age(dsns[dialect], dialect, "fos_lease", ("maintenance_since",), c)
    (node,) = await store.list_nodes(c)
    assert node.last_seen_age_s is not None and _about_days_ago(-node.last_seen_age_s * 1000), node.last_seen_age_s
    control = (await store.read(c)).control
    assert _about_days_ago(-(control.maintenance_ms or 0)), control.maintenance_ms
    row = await store.status_row(c)
    assert row is not None and _about_days_ago(-row["maintenance_for_s"] * 1000), row["maintenance_for_s"]
