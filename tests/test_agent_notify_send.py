"""The delivery channels against real receivers on loopback: what a failure says (never a secret), and a mail
whose event detail holds line breaks is still one clean message."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from agent.config_notify import NotifyConfig
from agent.notify_rules import Notice
from agent.notify_send import DeliveryFailed, MailChannel, WebhookChannel, channels
from tests.support.peers import Peers
from tests.test_agent_notifier import free_port

TOKEN = "xoxb-Secret-Path-Token"


def notice(detail: str = "could not renew in time") -> Notice:
    summary = f"m1 dropped the common IP and fenced itself: {detail}"
    return Notice("fenced", "fenced.9", "c", "m1", 4, "2026-11-26T01:00:00.000Z", summary, {"detail": detail})


@pytest.fixture
async def echo_500() -> AsyncIterator[int]:
    """A webhook receiver that fails with the request's path in its answer, like some proxies do."""

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text=f"no route for {request.path_qs}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def test_a_failed_webhook_names_the_answer_without_the_token(echo_500: int) -> None:
    async with aiohttp.ClientSession() as session:
        hook = WebhookChannel(f"http://127.0.0.1:{echo_500}/services/{TOKEN}?sig={TOKEN}", 0, session, 2)
        with pytest.raises(DeliveryFailed) as err:
            await hook.send(notice(), "m1")
    assert str(err.value).startswith("HTTP 500 Internal Server Error no route for ")
    assert TOKEN not in str(err.value) and TOKEN not in hook.shown


async def test_a_detail_with_line_breaks_makes_one_clean_mail(tmp_path: object) -> None:
    smtp, web_port = free_port(), free_port()
    cfg = NotifyConfig(email_to=("ops@example.com",), smtp_host="127.0.0.1", smtp_port=smtp, smtp_security="none")
    async with Peers(str(tmp_path), "127.0.0.1", smtp, web_port) as peers:
        answer = await MailChannel(cfg, cfg.email_to).send(notice("line one\r\nBcc: evil@example.com\nline 3"), "m1")
    assert answer == "OK queued"
    [mail] = peers.mails()
    assert mail["to"] == ["ops@example.com"]
    headers = mail["data"].replace("\r\n", "\n").split("\n\n", 1)[0]
    assert not any(line.startswith("Bcc") for line in headers.splitlines()), "no header was injected"
    assert "line one Bcc: evil@example.com line 3" in headers.replace("\n ", " ")


async def test_channels_are_the_mail_then_each_webhook_and_to_replaces_the_addresses() -> None:
    cfg = NotifyConfig(email_to=("a@example.com",), webhooks=("https://h.example/1", "https://h.example/2"))
    async with aiohttp.ClientSession() as session:
        assert [c.name for c in channels(cfg, session)] == ["mail", "webhook.0", "webhook.1"]
        mail = channels(cfg, session, ("b@example.com",))[0]
        assert mail.shown == "mail to b@example.com via localhost:587 (starttls)"
