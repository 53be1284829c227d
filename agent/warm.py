"""Warm standby (`[application] mode = "warm"`): the application runs on every node, the standby's as well as the
active's, and only the common IP moves. One WarmSupervisor per agent keeps it running for the agent's whole life:
start it, wait until it is healthy (HealthCheck's fast polling while starting), watch it, and after an exit or
`failures` failed checks stop it (bounded) and start it again after a backoff. The runner only reads `healthy` and
waits on the two events: a standby competes for the lease only while healthy, an active node steps down when it
becomes unhealthy. During maintenance the application is neither stopped nor restarted (the operator works on it):
its health is only reported. The application is stopped for good only when the agent itself stops (close)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from .app import AppError, Application
from .clock import Clock, wait_either, wait_event
from .config import HealthConfig
from .health import HealthCheck

BACKOFF_CAP_S = 30.0  # the longest wait between two restarts
BACKOFF_RESET_S = 30.0  # healthy this long: the next restart waits only the first backoff again
SERVING_WAIT_S = 10.0  # at most this long a failed app waits for the runner to let go of the common IP
SERVING_POLL_S = 0.02

log = structlog.get_logger("fos.warm")


def next_backoff(previous: float | None, first: float, healthy_for: float) -> float:
    """The wait before the next restart: `first` for a first failure or after a healthy period of at least
    BACKOFF_RESET_S, else twice the previous wait, at most BACKOFF_CAP_S."""
    if previous is None or healthy_for >= BACKOFF_RESET_S:
        return min(first, BACKOFF_CAP_S)
    return min(2 * previous, BACKOFF_CAP_S)


class WarmSupervisor:
    def __init__(
        self,
        app: Application,
        health: HealthCheck,
        cfg: HealthConfig,
        clock: Clock,
        env: dict[str, str],
        paused: Callable[[], bool],
        on_change: Callable[[bool], None] = lambda _: None,
        serving: Callable[[], bool] = lambda: False,
    ) -> None:
        """`health`: the agent's HealthCheck (its `healthy` and `last_detail` are what the node row and /status
        show; nothing else checks the application in warm mode). `paused()`: maintenance is on (no stop, no
        restart). `on_change(healthy)`: called at each change of health (metrics, the node row at once).
        `serving()`: this node is active with the common IP (or still letting go of it)."""
        self.app, self.health, self.cfg, self.clock, self.env = app, health, cfg, clock, env
        self._paused, self._on_change, self._serving = paused, on_change, serving
        self.detail = "not started yet"
        self.failure = "not started yet"  # why it last became unhealthy (the detail then moves on: restarting...)
        self.became_healthy = asyncio.Event()  # set while healthy
        self.became_unhealthy = asyncio.Event()  # set while not healthy
        self.became_unhealthy.set()
        self.restarts = 0  # restarts after a failure (not the first start)
        self._task: asyncio.Task[None] | None = None

    # ---- what the runner reads ------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """The application is healthy now (the two events say it; `_mark` sets them)."""
        return self.became_healthy.is_set()

    async def wait_healthy(self, timeout: float) -> tuple[bool, str]:
        """(True, detail) at once if healthy, else once it becomes healthy within `timeout`; (False, detail) if
        it did not."""
        if not self.healthy:
            await wait_event(self.became_healthy, timeout)
        return self.healthy, self.detail

    async def wait_healthy_or(self, other: asyncio.Event, timeout: float) -> None:
        """Return once healthy, once `other` is set, or after `timeout` seconds, whichever comes first."""
        await wait_either(self.became_healthy, other, timeout)

    async def wait_unhealthy(self) -> str:
        """Return (with the reason) once the application is not healthy (at once if it is not now)."""
        await self.became_unhealthy.wait()
        return self.failure

    # ---- life -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin supervising (starts the application); a second call while running does nothing."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def close(self, stop_app: bool = True) -> None:
        """End the supervision and, with `stop_app`, stop the application (bounded as Application.stop is, and
        run to its end even if the caller is cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # the task had died: the app must still be stopped below
                log.error("warm_supervisor_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        if stop_app:
            self._mark(False, "the application is stopped: the agent stops")
            await self.app.stop()

    async def restart(self, why: str) -> None:
        """Stop the application now and supervise it afresh (a new start at once): for an application adopted
        under a keeper that would not end it with this agent."""
        await self.close(stop_app=False)
        self._mark(False, f"restarting: {why}")
        try:
            await self.app.stop()
        finally:  # also when the caller is cancelled meanwhile (the stop runs to its end): never left unsupervised
            self.start()

    def _mark(self, healthy: bool, detail: str) -> None:
        self.detail = detail
        self.health.healthy, self.health.last_detail = healthy, detail
        if healthy == self.healthy:
            return
        if not healthy:
            self.failure = detail
        (self.became_healthy if healthy else self.became_unhealthy).set()
        (self.became_unhealthy if healthy else self.became_healthy).clear()
        (log.info if healthy else log.warning)("warm_app_" + ("healthy" if healthy else "unhealthy"), detail=detail)
        self._on_change(healthy)

    async def _run(self) -> None:
        backoff: float | None = None
        while True:
            ok, detail = await self._bring_up()
            healthy_for = 0.0
            if ok:
                since = self.clock.now()
                self._mark(True, detail)
                detail = await self.health.watch()
                healthy_for = self.clock.now() - since
            self._mark(False, detail)
            if await self._report_while_paused():
                continue  # healthy again during maintenance: watch it
            backoff = next_backoff(backoff, self.cfg.interval, healthy_for)
            await self._until_not_serving()
            if await self._report_while_paused():  # maintenance came on meanwhile (the holder then serves on)
                continue
            await self.app.stop()
            self._mark(False, f"restarting in {backoff:g}s: {detail}"[:300])
            await self.clock.sleep(backoff)
            self.restarts += 1

    async def _until_not_serving(self) -> None:
        """An active node's failed application is stopped only once the runner let go of the common IP (IP first,
        then the app, as letgo.py does: the hold loop sees the failure and steps down). Bounded: a let-go that
        hangs does not keep a dead application from its restart for long."""
        deadline = self.clock.now() + SERVING_WAIT_S
        while self._serving() and self.clock.now() < deadline:
            await self.clock.sleep(SERVING_POLL_S)

    async def _bring_up(self) -> tuple[bool, str]:
        """Start the application (nothing if it runs; not during maintenance) and wait up to start_grace for
        its first healthy answer."""
        if not self._paused():
            try:
                await self.app.start(self.env)
            except AppError as exc:
                return False, str(exc)
            except OSError as exc:  # a fork that failed (EAGAIN), an unwritable pidfile: a failed start, retried
                return False, f"cannot start the application: {exc}"[:300]
        return await self.health.wait_healthy(self.cfg.start_grace)

    async def _report_while_paused(self) -> bool:
        """During maintenance: check every interval and report, touching nothing, until maintenance ends (False)
        or the application answers healthy (True)."""
        while self._paused():
            await self.clock.sleep(self.cfg.interval)
            ok, detail = await self.health.check_once()
            if ok:
                return True
            self._mark(False, f"maintenance: not restarted: {detail}"[:300])
        return False
