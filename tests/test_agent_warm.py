"""The warm supervisor (agent/warm.py) with a real SupervisedCommand running a tiny real process, checked by a real
TCP health check: started at once, restarted after an exit and after failed checks with a growing backoff, left
alone during maintenance, stopped only by close(). The backoff rule itself is table-tested."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent import warm
from agent.app import SupervisedCommand, _to_the_end
from agent.clock import SystemClock
from agent.config import HealthConfig
from agent.health import HealthCheck
from agent.keeper import group_alive
from agent.warm import BACKOFF_CAP_S, BACKOFF_RESET_S, WarmSupervisor, next_backoff
from tests.support.dbservers import free_port

INTERVAL = 0.05


@pytest.mark.parametrize(
    ("previous", "healthy_for", "expected"),
    [
        (None, 0.0, 0.2),  # the first failure: the first wait
        (0.2, 1.0, 0.4),  # again soon after: doubled
        (0.4, 0.0, 0.8),
        (20.0, 0.0, BACKOFF_CAP_S),  # never more than the cap
        (BACKOFF_CAP_S, 5.0, BACKOFF_CAP_S),
        (16.0, BACKOFF_RESET_S, 0.2),  # healthy long enough: back to the first wait
        (None, 100.0, 0.2),
    ],
)
def test_next_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_period(
    previous: float | None, healthy_for: float, expected: float
) -> None:
    assert next_backoff(previous, 0.2, healthy_for) == expected


class Rig:
    """A supervisor over `sleep 60` (pidfile in tmp), healthy while a TCP port of this test listens (checked in
    the event loop: no process per check, so the timing holds on a loaded machine)."""

    def __init__(self, tmp: Path, start_grace: float = 2.0) -> None:
        self.maintenance = False
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.app = SupervisedCommand(["sleep", "60"], stop_timeout=1.0, pidfile=str(tmp / "app.pid"))
        cfg = HealthConfig(tcp=self.port, interval=INTERVAL, timeout=INTERVAL, failures=2, start_grace=start_grace)
        self.health = HealthCheck(cfg, self.app, SystemClock())
        self.changes: list[bool] = []
        self.sup = WarmSupervisor(
            self.app, self.health, cfg, SystemClock(), {"FOS_NODE": "m1"}, lambda: self.maintenance, self.changes.append
        )

    async def well(self) -> None:
        self.server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", self.port)

    async def sick(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def pid(self) -> int | None:
        proc = self.app._proc
        return proc.pid if proc is not None and proc.returncode is None else None


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    await r.well()
    yield r
    await r.sup.close()
    await r.sick()


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_starts_the_app_at_once_and_reports_healthy(rig: Rig) -> None:
    assert not rig.sup.healthy and rig.sup.became_unhealthy.is_set()
    rig.sup.start()
    ok, _ = await rig.sup.wait_healthy(5)
    assert ok and rig.pid() is not None
    assert rig.sup.became_healthy.is_set() and not rig.sup.became_unhealthy.is_set()
    assert rig.health.healthy is True and rig.changes == [True]  # what the node row and /status show


async def test_an_app_that_exits_is_restarted_and_healthy_again(rig: Rig) -> None:
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    first = rig.pid()
    assert first is not None
    os.killpg(first, signal.SIGKILL)
    detail = await asyncio.wait_for(rig.sup.wait_unhealthy(), 5)
    assert "exited" in detail and rig.health.healthy is False
    await until(lambda: rig.sup.healthy, what="the restarted app to be healthy")
    assert rig.pid() not in (None, first) and rig.sup.restarts == 1
    assert rig.changes == [True, False, True]


async def test_an_app_failing_its_checks_is_stopped_and_restarted(rig: Rig) -> None:
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    first = rig.pid()
    await rig.sick()
    detail = await asyncio.wait_for(rig.sup.wait_unhealthy(), 5)
    assert "2 health checks failed" in detail
    await until(lambda: rig.pid() not in (None, first), what="a new process")  # the old one was stopped
    assert first is not None and not group_alive(first)  # keeper and app
    await rig.well()
    await until(lambda: rig.sup.healthy, what="healthy after the checks pass again")


async def test_restarts_back_off_while_the_app_stays_sick(tmp_path: Path) -> None:
    r = Rig(tmp_path, start_grace=0.1)
    # never healthy (nothing listens): every start fails within start_grace
    waits: list[str] = []
    r.sup.start()
    try:
        await until(
            lambda: waits.append(r.sup.detail) or len({w for w in waits if w.startswith("restarting in")}) >= 3,
            what="three restarts",
        )
    finally:
        await r.sup.close()
    seen = list(dict.fromkeys(w.split(":")[0] for w in waits if w.startswith("restarting in")))
    assert seen[:3] == ["restarting in 0.05s", "restarting in 0.1s", "restarting in 0.2s"]
    assert not r.sup.healthy and r.pid() is None  # close() stopped the last one


async def test_no_restart_and_no_stop_during_maintenance(rig: Rig) -> None:
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    rig.maintenance = True
    first = rig.pid()
    assert first is not None
    await rig.sick()  # failing checks: reported, but the process is left alone
    await asyncio.wait_for(rig.sup.wait_unhealthy(), 5)
    await asyncio.sleep(20 * INTERVAL)  # many intervals in which a restart would have happened
    assert rig.pid() == first and rig.sup.restarts == 0 and "maintenance" in rig.sup.detail
    await rig.well()  # healthy again under maintenance: reported
    await until(lambda: rig.sup.healthy, what="healthy again during maintenance")
    assert rig.pid() == first
    os.killpg(first, signal.SIGKILL)  # an exit during maintenance: not restarted either
    await asyncio.wait_for(rig.sup.wait_unhealthy(), 5)
    await asyncio.sleep(20 * INTERVAL)
    assert rig.pid() is None and rig.sup.restarts == 0
    rig.maintenance = False  # maintenance over: restarted
    await until(lambda: rig.sup.healthy, what="restarted after maintenance")
    assert rig.pid() not in (None, first)


async def test_close_stops_the_app_unless_it_is_left_running(rig: Rig) -> None:
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    pid = rig.pid()
    await rig.sup.close(stop_app=False)  # a maintenance stop: the app stays
    assert pid is not None and rig.pid() == pid and group_alive(pid)
    await rig.sup.close()
    assert rig.pid() is None and not rig.sup.healthy
    assert not group_alive(pid)  # stop() returns once the whole group is gone


async def test_wait_healthy_or_ends_on_the_other_event_or_the_timeout(rig: Rig) -> None:
    other = asyncio.Event()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await rig.sup.wait_healthy_or(other, 0.1)  # not started: only the timeout ends it
    assert 0.09 <= loop.time() - began < 1
    other.set()
    began = loop.time()
    await rig.sup.wait_healthy_or(other, 5)
    assert loop.time() - began < 0.5
    rig.sup.start()
    await rig.sup.wait_healthy_or(asyncio.Event(), 5)
    assert rig.sup.healthy


async def test_restart_replaces_the_running_app_and_supervises_the_new_one(rig: Rig) -> None:
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    first = rig.pid()
    await rig.sup.restart("adopted under an older keeper")
    assert first is not None and not group_alive(first)
    assert (await rig.sup.wait_healthy(5))[0] and rig.pid() not in (None, first)
    assert rig.changes == [True, False, True]


async def test_a_restart_cancelled_during_its_stop_still_leaves_the_app_supervised(tmp_path: Path) -> None:
    """WarmSupervisor.restart runs inside the runner's resume work (an app adopted under an older keeper), which
    the hold loop cancels on a fence deadline, a lost lease or `fos disable`. The stop runs to its end (it is
    shielded), but the cancellation then skips start(): no task supervises the application any more, nothing
    restarts it, and the node stays unhealthy (never competes) for the rest of the agent's life."""
    r = Rig(tmp_path)
    real_stop = r.app.stop

    async def slow_stop() -> None:  # an application that takes a second to stop; run to its end, as stop() is
        async def stopping() -> None:
            await asyncio.sleep(1.0)
            await real_stop()

        await _to_the_end(stopping())

    r.app.stop = slow_stop  # type: ignore[method-assign]
    await r.well()
    r.sup.start()
    try:
        assert (await r.sup.wait_healthy(5))[0]
        restarting = asyncio.create_task(r.sup.restart("adopted under an older keeper"))
        await until(lambda: not r.sup.healthy, what="the restart's stop to begin")
        await asyncio.sleep(0.2)
        restarting.cancel()  # the hold loop ends the resume work
        with pytest.raises(asyncio.CancelledError):
            await restarting
        await until(lambda: r.sup.healthy, 5, "the application supervised and healthy again")
    finally:
        await r.sup.close()
        await r.sick()


async def test_close_stops_the_app_even_after_the_supervisor_died_of_an_unexpected_error(rig: Rig) -> None:
    """A supervisor task ended by an error nobody expected: close() (the agent's stop) must still stop the app and
    not raise that error instead (it used to, before app.stop(), leaving the app running past the agent)."""
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    stops: list[int] = []
    real_stop = rig.app.stop

    async def counted_stop() -> None:
        stops.append(1)
        await real_stop()

    async def broken_start(env: dict[str, str]) -> None:
        raise RuntimeError("unexpected")

    rig.app.stop, rig.app.start = counted_stop, broken_start  # type: ignore[method-assign]
    first = rig.pid()
    assert first is not None
    os.killpg(first, signal.SIGKILL)
    task = rig.sup._task
    assert task is not None
    await until(task.done, what="the supervisor's task to die of the error")
    before = len(stops)
    await rig.sup.close()  # must not raise
    assert len(stops) == before + 1 and not rig.sup.healthy


async def test_a_failed_app_waiting_for_the_let_go_is_not_stopped_once_maintenance_came_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review h-rev3. The supervisor checks maintenance once, at the unhealthy verdict, then waits for the runner to
    let go of the common IP (_until_not_serving, SERVING_WAIT_S) and stops the app without looking again. When the
    holder's control read saw maintenance on in between (it lands between the verdict and the hold loop's handling of
    it), the runner keeps holding (no step-down during maintenance: `app_failed_during_maintenance`), so the node
    stays serving; the supervisor then stopped the app at the end of the wait, during maintenance, and did not start
    it again (_bring_up starts nothing during maintenance): the active node kept the IP with no application until
    maintenance ended, against "during maintenance it neither stops nor restarts it"."""
    monkeypatch.setattr(warm, "SERVING_WAIT_S", 0.3)  # (10 s in production: the same stop, later)

    def serving() -> bool:
        rig.maintenance = True  # the runner saw maintenance on and stays active: it serves on
        return True

    rig.sup._serving = serving
    rig.sup.start()
    assert (await rig.sup.wait_healthy(5))[0]
    first = rig.pid()
    assert first is not None
    await rig.sick()
    await asyncio.wait_for(rig.sup.wait_unhealthy(), 5)
    await asyncio.sleep(0.3 + 20 * INTERVAL)  # past the wait, and many intervals in which a stop would have happened
    assert rig.maintenance, "the supervisor waited for the let-go"
    assert rig.pid() == first, "the app was stopped during maintenance (and nothing starts it before its end)"
