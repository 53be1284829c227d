"""The notifier against a real SQLite lease database, a real SMTP server (aiosmtpd) and a real webhook receiver on
loopback: exactly once across nodes, a take-over of a dead sender's message, stop within a second, no secrets."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from agent.config import Config, parse
from agent.notifier import Notifier, open_outbox_store
from lease import SqlLeaseStore
from tests.support.peers import Peers

PASSWORD = "pw-Secret-4711"
HOOK_TOKEN = "T0KEN-in-the-path-0815"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Bed:
    def __init__(self, work: str, **notify: Any) -> None:
        self.work = work
        self.smtp_port, self.web_port = free_port(), free_port()
        self.hang = os.path.join(work, "hang")
        self.peers = Peers(work, "127.0.0.1", self.smtp_port, self.web_port, hang_file=self.hang)
        table = {
            "email_to": "ops@example.com, dba@example.com",
            "email_from": "fos@example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.smtp_port,
            "smtp_security": "none",
            "webhooks": [f"http://127.0.0.1:{self.web_port}/hook/${{HOOK_TOKEN}}"],
            "timeout": 1,
            "takeover_after": 2,
            **notify,
        }
        data = {
            "cluster": {"name": "nt", "address_driver": "none"},
            "nodes": [{"name": "m1"}, {"name": "m2"}],
            "database": {"dsn": f"Driver=SQLite3;Database={work}/lease.db;Timeout=2000"},
            "lease": {"ttl": 4, "heartbeat": 1},
            "notify": table,
        }
        self.cfg: Config = parse(data, env={"HOOK_TOKEN": HOOK_TOKEN, "SMTP_PW": PASSWORD})
        self.notifiers: list[Notifier] = []
        self.holder: dict[str, int | None] = {"m1": None, "m2": None}

    def hang_mail(self) -> None:
        with open(self.hang, "w"):
            pass

    async def tailing(self) -> None:
        """Every notifier started so far reads new events (their first read of the history is done)."""
        async with asyncio.timeout(10):
            for n in self.notifiers:
                await n.tailing.wait()

    def notifier(self, node: str) -> Notifier:
        n = Notifier(self.cfg, node, open_outbox_store(self.cfg), lambda: self.holder[node], promotion_wait=3)
        n.start()
        self.notifiers.append(n)
        return n

    async def event(self, store: SqlLeaseStore, node: str, kind: str, epoch: int | None, detail: str) -> None:
        await store.record_event("nt", node, kind, epoch, detail)


@pytest.fixture
async def bed(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bed, SqlLeaseStore]]:
    with tempfile.TemporaryDirectory(prefix="fos-notify-") as work:
        b = Bed(work, **getattr(request, "param", {}))
        store = SqlLeaseStore(b.cfg.database.dsn, call_timeout=5)
        await store.init_schema()
        await b.peers.start()
        try:
            yield b, store
        finally:
            for n in b.notifiers:
                await n.stop()
            await b.peers.stop()
            await store.close()


async def test_a_takeover_seen_by_two_nodes_is_mailed_and_posted_exactly_once(bed: tuple[Bed, SqlLeaseStore]) -> None:
    b, store = bed
    n1, n2 = b.notifier("m1"), b.notifier("m2")
    await b.tailing()  # both tail from the newest event on
    await b.event(store, "m2", "takeover", 8, "m1 (epoch 7) expired 150 ms before the read")
    await b.event(store, "m2", "promoted", 8, "serving 10.0.0.100/24: healthy")
    mails = await wait_until(b.peers.mails, 10, "the mail")
    hooks = await wait_until(b.peers.hooks, 10, "the webhook")
    await asyncio.sleep(2.5)  # time for a duplicate to show up
    assert len(b.peers.mails()) == 1 and len(b.peers.hooks()) == 1
    mail, hook = mails[0], hooks[0]["body"]
    assert sorted(mail["to"]) == ["dba@example.com", "ops@example.com"]
    assert "master_node_down: m2 took over from m1 (epoch 8)" in mail["data"]
    assert hook["kind"] == "master_node_down" and hook["node"] == "m2" and hook["epoch"] == 8
    assert hook["facts"]["previous_holder"] == "m1" and hook["facts"]["down_at_most_s"] > 0
    assert hook["text"].startswith("[fos nt] CRITICAL master_node_down: m2 took over from m1")
    assert len(n1.delivered) + len(n2.delivered) == 2  # one mail and one webhook, from one of the two
    outbox = open_outbox_store(b.cfg)
    row = await outbox.read_message("nt", hook["key"])
    await outbox.close()
    assert row is not None and row.sent and row.delivered == {"mail", "webhook.0"}


async def test_a_message_whose_sender_died_mid_way_is_taken_over_and_each_channel_delivered_once(
    bed: tuple[Bed, SqlLeaseStore],
) -> None:
    b, store = bed
    b.hang_mail()  # the mail server accepts and never answers
    n1 = b.notifier("m1")
    await b.tailing()
    await b.event(store, "m1", "stepped_down", 3, "the application failed its health check")
    await wait_until(b.peers.hooks, 10, "the webhook")  # delivered; the mail hangs
    await asyncio.sleep(0.5)
    await n1.stop()  # the sender dies mid-way: its message is neither sent nor given back
    outbox = open_outbox_store(b.cfg)
    rows = await outbox.stale("nt", 0, 60_000)
    assert [(r.claimed_by, r.sent, r.delivered) for r in rows] == [("m1", False, {"webhook.0"})]
    os.unlink(b.hang)  # the mail server recovers
    taken = time.monotonic()
    n2 = b.notifier("m2")
    mails = await wait_until(b.peers.mails, 15, "the mail sent by the node that took over")
    print(f"taken over and mailed {time.monotonic() - taken:.1f}s after the second node started")
    await b.tailing()
    assert len(b.peers.mails()) == 1 and len(b.peers.hooks()) == 1, "each channel exactly once"
    assert "stepped_down" in mails[0]["data"] and "m2" in mails[0]["data"]  # sent by m2
    # The receiver has the mail a moment before the sender records the answer: wait for that record too.
    await wait_until(lambda: n2.delivered, 5, "m2's record of the delivery")
    assert [c for _, c, _ in n2.delivered] == ["mail"]
    # ...and the outbox row marked sent, which the sender writes after its in-memory record (failed under load).
    deadline = time.monotonic() + 5
    while (row := await outbox.read_message("nt", rows[0].key)) is not None and not row.sent:
        assert time.monotonic() < deadline, f"the row was not marked sent within 5 s: {row}"
        await asyncio.sleep(0.05)
    await outbox.close()
    assert row is not None and row.sent and row.claimed_by == "m2" and row.attempts == 2


async def test_stop_returns_within_a_second_while_a_delivery_hangs_and_the_message_stays_unsent(
    bed: tuple[Bed, SqlLeaseStore],
) -> None:
    b, store = bed
    b.hang_mail()
    n1 = b.notifier("m1")
    await b.tailing()
    await b.event(store, "m1", "fenced", 4, "could not renew in time")
    await wait_until(lambda: n1._active, 10, "the delivery to start")
    started = time.monotonic()
    await n1.stop()
    assert time.monotonic() - started < 1.0
    outbox = open_outbox_store(b.cfg)
    rows = await outbox.stale("nt", 0, 60_000)
    await outbox.close()
    assert len(rows) == 1 and rows[0].kind == "fenced" and not rows[0].sent


@pytest.mark.parametrize("bed", [{"smtp_user": "fos", "smtp_password": "${SMTP_PW}"}], indirect=True)
async def test_secrets_never_reach_logs_the_outbox_or_the_messages(bed: tuple[Bed, SqlLeaseStore]) -> None:
    b, store = bed
    await b.peers.stop()  # nothing listens: every attempt fails and is logged
    with structlog.testing.capture_logs() as logs:
        n1 = b.notifier("m1")
        await b.tailing()
        await b.event(store, "m1", "flapping", 2, "3 take-overs in 3600s")
        await wait_until(lambda: sum(e["event"] == "notification_attempt_failed" for e in logs) >= 2, 10, "failures")
        await n1.stop()
    text = repr(logs)
    outbox = open_outbox_store(b.cfg)
    rows = await outbox.stale("nt", 0, 60_000)
    await outbox.close()
    events = await store.list_events("nt", limit=50)
    everything = text + repr(rows) + repr(events) + repr(b.cfg)
    assert b.cfg.notify.smtp_password == PASSWORD  # it was configured, and is nowhere below
    assert HOOK_TOKEN not in everything and PASSWORD not in everything and "/hook/" not in text
    assert "webhook http://127.0.0.1:" in text  # the channel is named, without its path


@pytest.mark.parametrize("bed", [{"min_interval": 600, "events": ["stepped_down", "fenced"]}], indirect=True)
async def test_min_interval_merges_repeats_of_a_kind_and_events_chooses_the_kinds(
    bed: tuple[Bed, SqlLeaseStore],
) -> None:
    b, store = bed
    b.notifier("m1")
    b.notifier("m2")
    await b.tailing()
    await b.event(store, "m1", "stepped_down", 3, "first")
    await b.event(store, "m1", "takeover", 4, "m1 (epoch 3) expired 10 ms before the read")  # not chosen
    await b.event(store, "m2", "stepped_down", 4, "second, within the interval")
    await b.event(store, "m2", "fenced", 4, "could not renew in time")
    await wait_until(lambda: len(b.peers.hooks()) >= 2, 10, "two webhooks")
    await asyncio.sleep(5)  # the held take-over would be sent after promotion_wait (3 s) if it were chosen
    kinds = sorted(h["body"]["kind"] for h in b.peers.hooks())
    assert kinds == ["fenced", "stepped_down"] and len(b.peers.mails()) == 2
    assert next(h for h in b.peers.hooks() if h["body"]["kind"] == "stepped_down")["body"]["summary"].endswith("first")


async def test_a_delivery_attempt_is_cut_at_notify_timeout(bed: tuple[Bed, SqlLeaseStore]) -> None:
    b, store = bed
    b.hang_mail()
    with structlog.testing.capture_logs() as logs:
        n1 = b.notifier("m1")
        await b.tailing()
        await b.event(store, "m1", "fenced", 4, "could not renew in time")
        await wait_until(lambda: n1._active, 10, "the delivery to start")
        started = time.monotonic()
        failures = await wait_until(
            lambda: [e for e in logs if e["event"] == "notification_attempt_failed"], 5, "the first attempt to fail"
        )
    took = time.monotonic() - started
    failure = failures[0]
    assert failure["channel"].startswith("mail to ") and "Timeout" in failure["error"]
    assert took < 1.6, f"notify.timeout is 1 s, the attempt took {took:.1f}s"


def _insert_event_with_id(dsn: str, event_id: int, kind: str) -> None:
    """An event row with a chosen id, as a commit that became visible after a higher id was read would be."""
    import pyodbc

    conn = pyodbc.connect(dsn, autocommit=True)
    try:
        conn.cursor().execute(
            "INSERT INTO fos_event (id, cluster_name, at, node_name, kind, epoch, detail) "
            "VALUES (?, 'nt', strftime('%Y-%m-%d %H:%M:%f', 'now'), 'm1', ?, 5, 'late')",
            (event_id, kind),
        )
    finally:
        conn.close()


async def test_history_before_the_start_is_not_sent_and_a_late_visible_lower_id_is(
    bed: tuple[Bed, SqlLeaseStore],
) -> None:
    b, store = bed
    await b.event(store, "m1", "fenced", 1, "before the notifier started")
    [before] = await store.list_events("nt", limit=1)
    b.notifier("m1")
    await b.tailing()
    _insert_event_with_id(b.cfg.database.dsn, before.id + 10, "stepped_down")
    await wait_until(lambda: len(b.peers.hooks()) == 1, 10, "the first webhook")
    _insert_event_with_id(b.cfg.database.dsn, before.id + 5, "flapping")  # a lower id, visible later
    await wait_until(lambda: len(b.peers.hooks()) == 2, 10, "the late event's webhook")
    await asyncio.sleep(2)
    assert [h["body"]["kind"] for h in b.peers.hooks()] == ["stepped_down", "flapping"]


@pytest.mark.parametrize("bed", [{"webhooks": ["http://127.0.0.1:9/never"]}], indirect=True)
async def test_a_path_that_keeps_failing_does_not_hold_up_later_messages_and_is_retried_later(
    bed: tuple[Bed, SqlLeaseStore],
) -> None:
    b, store = bed
    with structlog.testing.capture_logs() as logs:
        b.notifier("m1")
        await b.tailing()
        await b.event(store, "m1", "fenced", 4, "first")
        await b.event(store, "m1", "flapping", 4, "second")
        mails = await wait_until(lambda: len(b.peers.mails()) == 2 and b.peers.mails(), 10, "both mails")
        # both stay unsent (the webhook never answers) and are taken up again after takeover_after (2 s)
        await wait_until(
            lambda: len({e["key"] for e in logs if e["event"] == "notification_taken_over"}) == 2, 15, "retries"
        )
    assert [" fenced: " in mails[0]["data"], " flapping: " in mails[1]["data"]] == [True, True]
    outbox = open_outbox_store(b.cfg)
    rows = await outbox.stale("nt", 0, 60_000)
    await outbox.close()
    assert sorted((r.kind, r.delivered, r.sent) for r in rows) == [
        ("fenced", frozenset({"mail"}), False),
        ("flapping", frozenset({"mail"}), False),
    ]
    assert len(b.peers.mails()) == 2, "the delivered mail is not sent again"
