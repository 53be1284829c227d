"""Health checks of the application: an HTTP URL answering 2xx, a local TCP port accepting connections, or a
command exiting 0. Each attempt is bounded by its timeout; a run of `failures` consecutive failures is a failure.

While the application starts, it is checked every STARTING_POLL_S (or the configured interval, if shorter) until
its first success: a promotion waits for the app's first healthy answer, and a 2 s interval would add up to 2 s
to every failover. Once healthy, the configured interval applies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import urllib.parse

import structlog

from .app import Application, _spawn, _terminate_group
from .clock import Clock, wait_event, within
from .config import HealthConfig, redact_url, scrub_url

STARTING_POLL_S = 0.05  # between checks of a starting application, until its first success
MAX_REDIRECTS = 5  # an HTTP check follows this many redirects (301, 302, 303, 307, 308) to the final answer
_REDIRECTS = (301, 302, 303, 307, 308)

log = structlog.get_logger("fos.health")


class HealthCheck:
    def __init__(self, cfg: HealthConfig, app: Application, clock: Clock) -> None:
        self.cfg = cfg
        self.app = app
        self.clock = clock
        self.healthy: bool | None = None
        self.last_detail = "not checked yet"
        self._tls: ssl.SSLContext | None = None  # made at the first https check and kept: it costs CPU to build

    async def close(self) -> None:
        """Nothing stays open between checks (each HTTP check is one connection); kept for the agent's shutdown."""

    def forget(self, detail: str) -> None:
        """The app was stopped on purpose: its last health result no longer describes anything."""
        self.healthy, self.last_detail = None, detail

    async def check_once(self) -> tuple[bool, str]:
        cfg = self.cfg
        try:
            if cfg.http:
                status = await within(self._get(cfg.http), cfg.timeout)
                return 200 <= status < 300, f"GET {redact_url(cfg.http)} -> {status}"
            if cfg.tcp is not None:
                _, writer = await within(asyncio.open_connection("127.0.0.1", cfg.tcp), cfg.timeout)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True, f"tcp {cfg.tcp} accepts"
            if cfg.command:
                proc = await _spawn(cfg.command, {})
                try:
                    code = await within(proc.wait(), cfg.timeout)
                except TimeoutError:
                    await _terminate_group(proc, 0.5)
                    return False, f"health command timed out after {cfg.timeout:g}s"
                return code == 0, f"health command exited {code}"
        except (TimeoutError, OSError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
            # The detail reaches logs, events and /status: never with the URL's credentials.
            return False, scrub_url(f"{type(exc).__name__}: {exc}", cfg.http)[:200]
        running = self.app.running()
        return running is not False, "process running" if running else "no health check configured"

    async def _get(self, url: str) -> int:
        """The status of GET `url`, after at most MAX_REDIRECTS redirects. A URL's user:password@ goes out as
        HTTP basic authentication."""
        status, location = await self._get_once(url)
        for _ in range(MAX_REDIRECTS):
            if status not in _REDIRECTS or not location:
                break
            url = urllib.parse.urljoin(url, location)
            status, location = await self._get_once(url)
        return status

    async def _get_once(self, url: str) -> tuple[int, str | None]:
        """(status, Location header) of one GET on a connection of its own (HTTP/1.1, Connection: close).
        Raises OSError, ValueError (not an HTTP answer) or EOFError (the server closed early)."""
        parts = urllib.parse.urlsplit(url)
        tls = None
        if parts.scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        port = parts.port or (443 if tls else 80)
        reader, writer = await asyncio.open_connection(parts.hostname or "", port, ssl=tls)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}", "Connection: close"]
            if parts.username is not None:
                user = urllib.parse.unquote(parts.username)
                secret = urllib.parse.unquote(parts.password or "")
                head.append("Authorization: Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode())
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            status_line = (await reader.readuntil(b"\n")).split(None, 2)
            if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
                raise ValueError("the answer is not HTTP")
            location = None
            while (line := await reader.readuntil(b"\n")).strip():
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"location":
                    location = value.strip().decode("latin-1")
            return int(status_line[1]), location
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def wait_healthy(self, grace: float) -> tuple[bool, str]:
        """Check every STARTING_POLL_S (the interval, if shorter) until the first success or until `grace`
        seconds have passed."""
        began = self.clock.now()
        end = began + grace
        poll = min(self.cfg.interval, STARTING_POLL_S)
        while True:
            if self.app.exited.is_set():
                self.healthy = False
                return False, "the application exited during start-up"
            ok, detail = await self.check_once()
            self.healthy, self.last_detail = ok, detail
            if ok:
                log.info("app_healthy", after=round(self.clock.now() - began, 3))
                return True, detail
            if self.clock.now() >= end:
                return False, f"not healthy within {grace:g}s: {detail}"
            await self.clock.sleep(min(poll, max(0.0, end - self.clock.now())))

    async def watch(self) -> str:
        """Return (with the reason) once the application has failed: its process exited, or `failures`
        consecutive checks failed."""
        failures = 0
        while True:
            if await wait_event(self.app.exited, self.cfg.interval):
                self.healthy = False
                return "the application process exited"
            ok, detail = await self.check_once()
            self.last_detail = detail
            failures = 0 if ok else failures + 1
            self.healthy = ok or (failures < self.cfg.failures and self.healthy is not False)
            if failures >= self.cfg.failures:
                self.healthy = False
                return f"{failures} health checks failed in a row: {detail}"
