"""Health checks of the application: an HTTP URL answering 2xx, a local TCP port accepting connections, or a
command exiting 0. Each attempt is bounded by its timeout; a run of `failures` consecutive failures is a failure.

While the application starts, it is checked every STARTING_POLL_S (or the configured interval, if shorter) until
its first success: a promotion waits for the app's first healthy answer, and a 2 s interval would add up to 2 s
to every failover. Once healthy, the configured interval applies."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from .app import Application, _spawn, _terminate_group
from .clock import Clock, wait_event, within
from .config import HealthConfig, redact_url, scrub_url

STARTING_POLL_S = 0.05  # between checks of a starting application, until its first success

log = structlog.get_logger("fos.health")


class HealthCheck:
    def __init__(self, cfg: HealthConfig, app: Application, clock: Clock) -> None:
        self.cfg = cfg
        self.app = app
        self.clock = clock
        self.healthy: bool | None = None
        self.last_detail = "not checked yet"
        self._session: aiohttp.ClientSession | None = None  # one for all checks: a new one each time costs CPU

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, detail: str) -> None:
        """The app was stopped on purpose: its last health result no longer describes anything."""
        self.healthy, self.last_detail = None, detail

    async def check_once(self) -> tuple[bool, str]:
        cfg = self.cfg
        try:
            if cfg.http:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout))
                async with self._session.get(cfg.http) as resp:
                    return 200 <= resp.status < 300, f"GET {redact_url(cfg.http)} -> {resp.status}"
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
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            # The detail reaches logs, events and /status: never with the URL's credentials.
            return False, scrub_url(f"{type(exc).__name__}: {exc}", cfg.http)[:200]
        running = self.app.running()
        return running is not False, "process running" if running else "no health check configured"

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
