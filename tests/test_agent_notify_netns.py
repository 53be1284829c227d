"""Notifications from real agents on the namespace test bed, to real peers in a host of their own: an SMTP server
(aiosmtpd, STARTTLS with a certificate made here, AUTH) and a webhook receiver (tests/support/peers.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.support.cluster import ROOT, Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Host, Lan, wait_for
from tests.support.peers import make_cert, read_lines

TTL, HEARTBEAT = 4, 1
SMTP_PORT, WEB_PORT = 2525, 8099
PASSWORD, HOOK_TOKEN = "Sm7p-pass-word-42", "hook-token-in-path-9f3a"


class MailHost:
    def __init__(self, lan: Lan, work: str, tls: bool, hang: bool = False) -> None:
        self.host: Host = lan.add_host("mail")
        self.work = work
        self.hang = os.path.join(work, "hang")
        if hang:
            with open(self.hang, "w"):
                pass
        argv = [sys.executable, os.path.join(ROOT, "tests", "support", "peers.py"), work, str(SMTP_PORT), str(WEB_PORT)]
        self.cert: str | None = None
        if tls:
            self.cert, key = make_cert(work, self.host.ip)
            argv += ["--tls", self.cert, key, "--auth", f"fos:{PASSWORD}"]
        argv += ["--hang", self.hang]
        self.proc = self.host.popen(argv, cwd=ROOT)
        wait_for(lambda: self._listening(), 15, 0.1, "the mail and webhook peers")

    def _listening(self) -> bool:
        out = self.host.run("ss", "-ltn", check=False).stdout
        return f":{SMTP_PORT} " in out and f":{WEB_PORT} " in out

    def notify_toml(self, security: str, **more: Any) -> str:
        auth = 'smtp_user = "fos"\nsmtp_password = "${FOS_TEST_SMTP_PW}"\n' if security != "none" else ""
        extra = "".join(f"{k} = {v}\n" for k, v in more.items())
        return (
            "[notify]\n"
            'email_to = "ops@example.com, oncall@example.com"\n'
            'email_from = "fos@cluster.test"\n'
            f'smtp_host = "{self.host.ip}"\nsmtp_port = {SMTP_PORT}\nsmtp_security = "{security}"\n{auth}'
            f'webhooks = ["http://{self.host.ip}:{WEB_PORT}/hook/${{FOS_TEST_HOOK_TOKEN}}"]\n{extra}'
        )

    def mails(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            m for m in read_lines(os.path.join(self.work, "mail.jsonl")) if kind is None or f" {kind}: " in m["data"]
        ]

    def hooks(self, kind: str | None = None) -> list[dict[str, Any]]:
        docs = read_lines(os.path.join(self.work, "hooks.jsonl"))
        return [h for h in docs if kind is None or h["body"]["kind"] == kind]


@pytest.fixture
def make_cluster(lan: Lan, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Cluster]]:
    monkeypatch.setenv("FOS_TEST_SMTP_PW", PASSWORD)
    monkeypatch.setenv("FOS_TEST_HOOK_TOKEN", HOOK_TOKEN)
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def _iso_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_kill_9_of_the_active_mails_and_posts_master_node_down_once_then_standby_missing_back_and_database(
    make_cluster: Callable[..., Cluster], lan: Lan, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    os.chmod(tmp_path, 0o755)
    mail = MailHost(lan, str(tmp_path), tls=True)
    assert mail.cert is not None
    monkeypatch.setenv("SSL_CERT_FILE", mail.cert)  # the agents trust the test's certificate, nothing else changes
    c = make_cluster(toml=mail.notify_toml("starttls", standby_missing_after=3, database_unreachable_after=3))
    c.active_pair()
    served_by(c, "m1", 0, 10)
    killed = time.monotonic()
    c.kill_agent("m1", with_app=True)
    served_by(c, "m2", killed, TTL + 10)
    hooks = wait_for(lambda: mail.hooks("master_node_down"), 20, 0.1, "the master_node_down webhook")
    mails = wait_for(lambda: mail.mails("master_node_down"), 20, 0.1, "the master_node_down mail")
    status = c.status("m2")
    assert status is not None and status["role"] == "active"
    body = hooks[0]["body"]
    assert body["node"] == "m2" and body["epoch"] == status["epoch"] and body["facts"]["previous_holder"] == "m1"
    assert body["facts"]["previous_epoch"] == status["epoch"] - 1
    assert mails[0]["tls"] and mails[0]["auth"], "STARTTLS and AUTH were used"
    assert sorted(mails[0]["to"]) == ["oncall@example.com", "ops@example.com"]
    assert mails[0]["from"] == "fos@cluster.test"
    assert f"m2 took over from m1 (epoch {status['epoch']})" in mails[0]["data"]
    served_at = _iso_ts(body["facts"]["served_again_at"])
    print(
        f"master_node_down: webhook {hooks[0]['at'] - served_at:.2f}s and mail {mails[0]['at'] - served_at:.2f}s "
        f"after m2's PROMOTED event; the service was down for at most {body['facts']['down_at_most_s']}s"
    )
    # m1 stays dead: the holder reports that nobody could take over now, after standby_missing_after (3 s)
    missing = wait_for(lambda: mail.hooks("standby_missing"), 20, 0.1, "standby_missing")
    assert missing[0]["body"]["node"] == "m2"
    c.start("m1")
    c.wait_role("m1", "standby", 20)
    wait_for(lambda: mail.hooks("standby_back") and mail.mails("standby_back"), 20, 0.1, "standby_back")
    # the standby m1 loses the database: it says so itself past the threshold, and database_back once it is back
    cut = time.monotonic()
    c.cut_db("m1")
    unreachable = wait_for(lambda: mail.hooks("database_unreachable"), 20, 0.1, "database_unreachable")
    assert unreachable[0]["body"]["node"] == "m1" and time.monotonic() - cut >= 3
    c.restore_db("m1")
    back = wait_for(lambda: mail.hooks("database_back"), 20, 0.1, "database_back")
    assert back[0]["body"]["node"] == "m1" and "could not reach the database" in back[0]["body"]["summary"]
    # a standby that cannot reach the database could not take over either: the holder said so meanwhile
    wait_for(lambda: len(mail.hooks("standby_back")) == 2, 20, 0.1, "the second standby_back")
    time.sleep(2 * HEARTBEAT + 1)  # a duplicate from either node would have arrived by now
    expected = {"master_node_down": 1, "standby_missing": 2, "standby_back": 2, "database_unreachable": 1}
    for kind, count in {**expected, "database_back": 1}.items():
        assert len(mail.hooks(kind)) == count and len(mail.mails(kind)) == count, kind
    for name in ("m1", "m2"):
        log = c.log_text(name)
        assert PASSWORD not in log and HOOK_TOKEN not in log
    assert_never_two_holders(c)


def _failover_seconds(c: Cluster) -> float:
    c.active_pair()
    served_by(c, "m1", 0, 10)
    killed = time.monotonic()
    c.kill_agent("m1", with_app=True)
    return served_by(c, "m2", killed, TTL + 10) - killed


def test_a_hung_mail_server_leaves_the_failover_time_unchanged_and_the_mail_outlives_its_stopped_sender(
    make_cluster: Callable[..., Cluster], lan: Lan, tmp_path: Any
) -> None:
    os.chmod(tmp_path, 0o755)
    mail = MailHost(lan, str(tmp_path), tls=False, hang=True)
    other = Lan()  # the same run without notifications, on a LAN of its own (host names are per LAN)
    try:
        with clusters(other, ttl=TTL, heartbeat=HEARTBEAT) as make_plain:
            baseline = _failover_seconds(make_plain("sqlite"))
    finally:
        other.close()
    c = make_cluster("sqlite", toml=mail.notify_toml("none", timeout=2, takeover_after=4))
    with_notify = _failover_seconds(c)
    print(f"kill -9 to served by m2: {baseline:.2f}s without notifications, {with_notify:.2f}s with a hung mail server")
    assert with_notify < baseline + 1.0
    wait_for(lambda: mail.hooks("master_node_down"), 20, 0.1, "the webhook (it does not wait for the mail)")
    assert not mail.mails()
    # the sender is stopped while the mail still hangs: the message stays in the outbox, unsent
    c.agents["m2"].send_signal(signal.SIGTERM)
    assert c.agents["m2"].wait(timeout=15) == 0
    assert _outbox_rows(c) == [("master_node_down", "m2", None, "webhook.0")]
    c.start("m1")  # another node comes; the mail server recovers; m1 takes the message over and sends the mail
    recovered = time.monotonic()
    os.unlink(mail.hang)
    wait_for(lambda: mail.mails("master_node_down"), 40, 0.2, "the mail once the server answers")
    print(f"mail delivered by m1 {time.monotonic() - recovered:.1f}s after the server recovered (takeover_after 4 s)")
    assert "Sent once for the cluster by fos on m1" in mail.mails("master_node_down")[0]["data"]
    assert len(mail.mails("master_node_down")) == 1 and len(mail.hooks("master_node_down")) == 1


def _outbox_rows(c: Cluster) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(os.path.join(c.work, "lease.db"))) as db:
        return db.execute("SELECT kind, claimed_by, sent_at, delivered FROM fos_outbox").fetchall()
