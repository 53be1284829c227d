"""Delivery channels: mail through the configured SMTP server (aiosmtplib) and JSON webhooks (aiohttp).

A channel makes one attempt per call, bounded by its timeout, and returns the receiver's answer as one line, or
raises DeliveryFailed with one line. Neither ever contains a secret: the SMTP password and the webhook URLs (whose
path or query often is the token) are scrubbed from every message.
"""

from __future__ import annotations

import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import aiohttp
import aiosmtplib

from .config_notify import NotifyConfig, webhook_shown
from .notify_rules import Notice


class DeliveryFailed(Exception):
    """One attempt failed; the message is one line without secrets."""


class Channel(Protocol):
    name: str  # stable id recorded in the outbox ("mail", "webhook.0", ...)
    shown: str  # what logs and `fos notify test` show

    async def send(self, notice: Notice, sent_by: str) -> str:
        """Deliver once; return the receiver's answer. Raises DeliveryFailed."""
        ...


def _scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    out = " ".join(str(text).split())
    for s in secrets:
        if s:
            out = out.replace(s, "***")
    return out[:300]


class MailChannel:
    """One message to every address of `to` in one SMTP conversation (STARTTLS, SSL or plain, AUTH if a user is
    set). Certificates are verified against the system's trust store (SSL_CERT_FILE is honoured)."""

    def __init__(self, cfg: NotifyConfig, to: tuple[str, ...]) -> None:
        self.cfg, self.to = cfg, to
        self.name = "mail"
        self.shown = f"mail to {', '.join(to)} via {cfg.smtp_host}:{cfg.port} ({cfg.smtp_security})"

    def message(self, notice: Notice, sent_by: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.email_from or f"fos@{socket.getfqdn()}"
        msg["To"] = ", ".join(self.to)
        msg["Subject"] = notice.subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(idstring=notice.key, domain="fos.invalid")
        msg["X-Fos-Key"] = f"{notice.cluster}/{notice.key}"
        msg.set_content(notice.text(sent_by))
        return msg

    async def send(self, notice: Notice, sent_by: str) -> str:
        cfg = self.cfg
        try:
            _, answer = await aiosmtplib.send(
                self.message(notice, sent_by),
                hostname=cfg.smtp_host,
                port=cfg.port,
                username=cfg.smtp_user,
                password=cfg.smtp_password,
                use_tls=cfg.smtp_security == "ssl",
                start_tls=cfg.smtp_security == "starttls",
                tls_context=ssl.create_default_context() if cfg.smtp_security != "none" else None,
                timeout=cfg.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            raise DeliveryFailed(_scrub(f"{type(exc).__name__}: {exc}", (cfg.smtp_password,))) from None
        return _scrub(answer or "accepted", (cfg.smtp_password,))


class WebhookChannel:
    """A JSON POST; any 2xx answer is a delivery. Redirects are not followed (they would re-send the body)."""

    def __init__(self, url: str, index: int, session: aiohttp.ClientSession, timeout: float) -> None:
        self.url, self.session, self.timeout = url, session, timeout
        self.name = f"webhook.{index}"
        self.shown = f"webhook {webhook_shown(url)}"

    async def send(self, notice: Notice, sent_by: str) -> str:
        try:
            async with self.session.post(
                self.url,
                json=notice.webhook_body(sent_by),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                body = (await resp.content.read(200)).decode("utf-8", "replace")
                answer = f"HTTP {resp.status} {resp.reason or ''} {body}".strip()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DeliveryFailed(_scrub(f"{type(exc).__name__}: {exc}", self._secrets())) from None
        if not 200 <= resp.status < 300:
            raise DeliveryFailed(_scrub(answer, self._secrets()))
        return _scrub(answer, self._secrets())

    def _secrets(self) -> tuple[str | None, ...]:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return (self.url, parts.path if len(parts.path) > 1 else None, parts.query or None, parts.password)


def channels(cfg: NotifyConfig, session: aiohttp.ClientSession, to: tuple[str, ...] | None = None) -> list[Channel]:
    """Every configured path: the mail (to `to` instead of email_to if given) and each webhook."""
    out: list[Channel] = []
    addresses = to if to is not None else cfg.email_to
    if addresses:
        out.append(MailChannel(cfg, addresses))
    out += [WebhookChannel(url, i, session, cfg.timeout) for i, url in enumerate(cfg.webhooks)]
    return out
