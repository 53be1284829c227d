"""The people-side peers of the notification tests: a real SMTP server (aiosmtpd, optionally STARTTLS and AUTH) and
an aiohttp webhook receiver, each recording what it received with the wall-clock time of arrival as JSON lines.

In-process: `async with Peers(...)`; in a namespace host: `python tests/support/peers.py OUT_DIR SMTP_PORT
WEB_PORT [--tls CERT KEY] [--auth USER:PASSWORD] [--hang FILE]`. While the --hang file exists, the SMTP server
accepts connections and never says a word (a mail server that hangs); once it is removed, it answers again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class _Silent(asyncio.Protocol):
    """Accepts the connection and never answers."""


class _Recorder:
    def __init__(self, path: str) -> None:
        self.path = path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        _append(
            self.path,
            {
                "at": time.time(),
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": text,
                "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                "auth": bool(session.authenticated),
            },
        )
        return "250 OK queued"


def _append(path: str, doc: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(doc) + "\n")


def read_lines(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_cert(directory: str, ip: str) -> tuple[str, str]:
    """A self-signed certificate for `ip` (subjectAltName IP), made by openssl; returns (cert, key)."""
    cert, key = os.path.join(directory, "smtp.crt"), os.path.join(directory, "smtp.key")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            key,
            "-out",
            cert,
            "-subj",
            f"/CN={ip}",
            "-addext",
            f"subjectAltName=IP:{ip}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class Peers:
    """The SMTP server and the webhook receiver on `host`, recording into `out`."""

    def __init__(
        self,
        out: str,
        host: str,
        smtp_port: int,
        web_port: int,
        tls: tuple[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        hang_file: str | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.out, self.host, self.smtp_port, self.web_port = out, host, smtp_port, web_port
        self.tls, self.auth, self.hang_file, self.implicit_tls = tls, auth, hang_file, implicit_tls
        self.mail_path, self.hooks_path = os.path.join(out, "mail.jsonl"), os.path.join(out, "hooks.jsonl")
        self._closers: list[Callable[[], Any]] = []

    def _context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.tls)
        return ctx

    def _smtp(self) -> asyncio.Protocol:
        if self.hang_file and os.path.exists(self.hang_file):
            return _Silent()
        ctx = None if self.implicit_tls else self._context()  # implicit TLS: the server socket does it
        auth = self.auth

        def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and auth is not None
                and (data.login.decode(), data.password.decode()) == auth
            )
            return AuthResult(success=ok, handled=False)

        with warnings.catch_warnings():  # implicit TLS: AUTH over TLS that aiosmtpd cannot see
            warnings.simplefilter("ignore", UserWarning)
            return self._make_smtp(ctx, auth, authenticator)

    def _make_smtp(self, ctx: ssl.SSLContext | None, auth: tuple[str, str] | None, authenticator: Any) -> SMTP:
        return SMTP(
            _Recorder(self.mail_path),
            hostname="mail.test",
            tls_context=ctx,
            require_starttls=ctx is not None,
            auth_required=auth is not None,
            auth_require_tls=ctx is not None,  # implicit TLS: aiosmtpd cannot tell, the socket is TLS anyway
            authenticator=authenticator if auth else None,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server_ssl = self._context() if self.implicit_tls else None
        server = await loop.create_server(self._smtp, self.host, self.smtp_port, ssl=server_ssl)
        self._closers.append(server.close)

        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            _append(self.hooks_path, {"at": time.time(), "path": request.path, "body": body})
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/{tail:.*}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.web_port).start()
        self._closers.append(runner.cleanup)

    async def stop(self) -> None:
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> Peers:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def mails(self) -> list[dict[str, Any]]:
        return read_lines(self.mail_path)

    def hooks(self) -> list[dict[str, Any]]:
        return read_lines(self.hooks_path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("smtp_port", type=int)
    p.add_argument("web_port", type=int)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--tls", nargs=2)
    p.add_argument("--auth")
    p.add_argument("--hang")
    a = p.parse_args()
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    peers = Peers(a.out, a.host, a.smtp_port, a.web_port, tuple(a.tls) if a.tls else None, auth, a.hang)  # type: ignore[arg-type]

    async def run() -> None:
        await peers.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
