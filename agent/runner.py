"""The agent: one loop, one handler per role, each returning a Decision that is logged once per transition.

While the lease is held, renewals run as tasks beside whatever the role is doing (binding, starting the app),
and the loop wakes for the earliest of: a renewal finishing, the next renewal time, the fence deadline, an
application failure, a stop request. Nothing it awaits can postpone the fence deadline: each wait is bounded by
it, and a renewal stuck in the database is simply left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from lease import EventKind, HistoryStore, LeaseStore, StoreError
from netops import AddressBinder, NetopsError

from . import __version__
from .app import AppError, Application
from .clock import Clock, wait_event
from .config import Config, NodeConfig
from .health import HealthCheck
from .metrics import Metrics
from .roles import Decision, HoldEvent, Role, StandbyAction, after_holding, plan_standby
from .timing import KERNEL_LATENESS_S, address_lifetime, fence_deadline


class AgentStore(LeaseStore, HistoryStore, Protocol):
    """What the agent needs of the database: the lease and the history (SqlLeaseStore, MemoryLeaseStore)."""


@dataclass
class _RenewResult:
    sent: float
    ok: bool | None  # None: the call failed (database unreachable or slow)
    error: str = ""


class Agent:
    def __init__(
        self,
        cfg: Config,
        node: NodeConfig,
        store: AgentStore,
        binder: AddressBinder,
        app: Application,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg, self.node, self.store, self.binder, self.app, self.clock = cfg, node, store, binder, app, clock
        self.metrics = metrics or Metrics()
        self.health = HealthCheck(cfg.app.health, app, clock)
        self.role = Role.STANDBY
        self.epoch: int | None = None
        self.fence_at: float | None = None
        self.last_renewed_at: float | None = None
        self.renew_failing = False
        self.ip_bound = False
        self.last_tick = clock.now()
        self.stop_requested = asyncio.Event()
        self.stop_reason = ""
        self.transition_reason = "starting"
        self._not_before = 0.0
        self._pending = Decision(Role.STANDBY, "agent started")
        self._ip_lock = asyncio.Lock()
        self._report_now = asyncio.Event()
        self._db_down_logged = False
        self._base_log = structlog.get_logger("fos.agent").bind(node=node.name, cluster=cfg.cluster)
        self.log = self._base_log
        self._handlers: dict[Role, Callable[[], Awaitable[Decision]]] = {
            Role.STANDBY: self._standby,
            Role.PROMOTING: self._promoting,
            Role.ACTIVE: self._active,
            Role.DEMOTING: self._demoting,
            Role.FENCED: self._fenced,
        }

    # ---- timing shorthands ------------------------------------------------------------------------------------

    @property
    def ttl_ms(self) -> int:
        return int(self.cfg.lease.ttl * 1000)

    @property
    def call_timeout(self) -> float:
        return self.cfg.call_timeout

    def ip_bound_or_unmanaged(self) -> bool:
        return self.ip_bound or self.cfg.address_driver == "none"

    def _tick(self) -> None:
        self.last_tick = self.clock.now()

    # ---- the loop -----------------------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        self.stop_reason = why
        self.stop_requested.set()

    async def run(self) -> None:
        reporter = asyncio.create_task(self._report_loop())
        try:
            self._enter(self._pending)
            while self.role is not Role.STOPPED:
                self._enter(await self._handlers[self.role]())
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self.health.close()
            with contextlib.suppress(StoreError):
                await self.store.record_node(
                    self.cfg.cluster,
                    self.node.name,
                    Role.STOPPED.value,
                    None,
                    self.node.url,
                    __version__,
                    timeout=self.call_timeout,
                )

    def _enter(self, decision: Decision) -> None:
        self._pending = decision
        self.transition_reason = decision.reason
        previous, self.role = self.role, decision.role
        self.log.info(
            "transition", role=decision.role.value, previous=previous.value, epoch=self.epoch, reason=decision.reason
        )
        self.metrics.set_role(decision.role)
        self.metrics.epoch.set(self.epoch or 0)
        self._report_now.set()

    async def _sleep_until(self, when: float) -> None:
        """Sleep until local time `when`, or until a stop is requested."""
        await wait_event(self.stop_requested, when - self.clock.now())

    # ---- standby --------------------------------------------------------------------------------------------------

    async def _standby(self) -> Decision:
        poll = self.cfg.lease.heartbeat / 2
        while not self.stop_requested.is_set():
            self._tick()
            try:
                state = await self.store.read(self.cfg.cluster, timeout=self.call_timeout)
            except StoreError as exc:
                self._db_down(exc)
                await self._drop_ip()  # we cannot know we hold the lease: the safe side is not to serve
                await self._sleep_until(self.clock.now() + poll)
                continue
            self._db_up()
            plan = plan_standby(state, self.node.name, self.clock.now(), poll, self._not_before)
            if plan.action is StandbyAction.WAIT:
                await self._drop_ip()  # level-triggered: a standby never has the common IP (crash leftovers)
                await self._sleep_until(plan.wake_at)
                continue
            sent = self.clock.now()
            try:
                got = await self.store.try_acquire(
                    self.cfg.cluster, self.node.name, self.ttl_ms, expected=state, timeout=self.call_timeout
                )
            except StoreError as exc:
                self._db_down(exc)
                await self._sleep_until(self.clock.now() + min(poll, 0.1))
                continue
            if got.acquired:
                self.epoch = got.epoch
                self.fence_at = fence_deadline(sent, self.cfg.lease.ttl, self.cfg.lease.fence_margin)
                self.last_renewed_at = sent
                self.log = self._base_log.bind(epoch=self.epoch)
                return Decision(Role.PROMOTING, f"{plan.reason}; acquired epoch {got.epoch}")
        return Decision(Role.STOPPED, f"stop requested ({self.stop_reason})")

    def _db_down(self, exc: Exception) -> None:
        if not self._db_down_logged:
            self.log.warning("database_unavailable", role=self.role.value, error=str(exc))
            self._db_down_logged = True

    def _db_up(self) -> None:
        if self._db_down_logged:
            self.log.info("database_available", role=self.role.value)
            self._db_down_logged = False

    # ---- holding the lease ------------------------------------------------------------------------------------

    async def _renew(self) -> _RenewResult:
        assert self.epoch is not None
        sent = self.clock.now()
        try:
            with self.metrics.renew_latency.time():
                ok = await self.store.renew(
                    self.cfg.cluster, self.node.name, self.epoch, self.ttl_ms, timeout=self.call_timeout
                )
            return _RenewResult(sent, ok)
        except StoreError as exc:
            return _RenewResult(sent, None, str(exc))

    async def _hold(self, work: Coroutine[Any, Any, str] | None, watch_app: bool) -> tuple[HoldEvent, str]:
        """Keep the lease while `work` runs (or, without work, until something happens)."""
        assert self.fence_at is not None and self.last_renewed_at is not None
        heartbeat = self.cfg.lease.heartbeat
        next_renew = self.last_renewed_at + heartbeat
        tasks: dict[str, asyncio.Task[Any]] = {"stop": asyncio.create_task(self.stop_requested.wait())}
        if work is not None:
            tasks["work"] = asyncio.create_task(work)
        if watch_app:
            tasks["app"] = asyncio.create_task(self.health.watch())
        try:
            while True:
                self._tick()
                renew = tasks.get("renew")
                if renew is not None and renew.done():
                    del tasks["renew"]
                    result: _RenewResult = renew.result()
                    if result.ok:
                        self.renew_failing = False
                        self.last_renewed_at = result.sent
                        self.fence_at = max(
                            self.fence_at, fence_deadline(result.sent, self.cfg.lease.ttl, self.cfg.lease.fence_margin)
                        )
                        next_renew = result.sent + heartbeat
                        await self._refresh_ip()
                    elif result.ok is False:
                        return HoldEvent.LEASE_LOST, "a renewal found another epoch or holder"
                    else:
                        self.metrics.renew_failures.inc()
                        if not self.renew_failing:
                            self.log.warning("renew_failed", error=result.error)
                        self.renew_failing = True
                        next_renew = self.clock.now() + min(heartbeat / 4, 0.5)
                now = self.clock.now()
                self.metrics.lease_seconds_left.set(max(0.0, self.fence_at - now))
                if now >= self.fence_at:
                    return HoldEvent.FENCE_DEADLINE, f"{now - self.fence_at:.3f}s past it"
                if tasks["stop"].done():
                    return HoldEvent.STOP_REQUESTED, self.stop_reason
                if "work" in tasks and tasks["work"].done():
                    exc = tasks["work"].exception()
                    if exc is None:
                        return HoldEvent.WORK_DONE, str(tasks["work"].result())
                    return HoldEvent.WORK_FAILED, str(exc)
                if "app" in tasks and tasks["app"].done():
                    self.metrics.app_healthy.set(0)
                    return HoldEvent.APP_FAILED, str(tasks["app"].result())
                if "renew" not in tasks and now >= next_renew:
                    tasks["renew"] = asyncio.create_task(self._renew())
                deadline = self.fence_at if "renew" in tasks else min(self.fence_at, next_renew)
                await asyncio.wait(
                    tasks.values(), timeout=max(0.0, deadline - self.clock.now()), return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in tasks.values():
                task.cancel()
            # Work (promotion) must be fully unwound before the caller drops the IP and stops the app.
            if "work" in tasks:
                with contextlib.suppress(BaseException):
                    await tasks["work"]

    async def _refresh_ip(self) -> None:
        """Extend the common IP's kernel lifetime to end before the fence deadline; re-bind it if the kernel
        removed it while the lease is still ours (level-triggered)."""
        if not self.ip_bound or self.fence_at is None:
            return
        async with self._ip_lock:
            lifetime = address_lifetime(self.fence_at, self.clock.now())
            try:
                if lifetime is None:
                    return  # the address's current lifetime ends sooner anyway
                if not await self.binder.refresh(lifetime):
                    self.log.warning("ip_missing_rebinding", lifetime=lifetime)
                    await self.binder.bind(lifetime, force=True)
                    await self.binder.announce()
                # Were we delayed (descheduled, frozen) between reading the clock and the kernel taking it?
                late = self.clock.now() + lifetime + KERNEL_LATENESS_S - self.fence_at
                if late > 0:
                    shorter = address_lifetime(self.fence_at, self.clock.now())
                    if shorter is None:
                        await self.binder.unbind()
                        self.ip_bound = False
                    else:
                        await self.binder.refresh(shorter)
            except NetopsError as exc:
                self.log.warning("ip_refresh_failed", error=str(exc))

    # ---- promoting / active ---------------------------------------------------------------------------------

    async def _promote(self) -> str:
        assert self.fence_at is not None and self.epoch is not None
        async with self._ip_lock:
            lifetime = address_lifetime(self.fence_at, self.clock.now())
            if lifetime is None and self.cfg.address_driver == "netlink":
                raise AppError("too little of the lease is left to bind the common IP safely")
            await self.binder.bind(lifetime, force=not self.cfg.probe_conflict)
            self.ip_bound = True
            self.metrics.ip_bound.set(1)
            await self.binder.announce()
        env = {"FOS_NODE": self.node.name, "FOS_CLUSTER": self.cfg.cluster, "FOS_EPOCH": str(self.epoch)}
        await self.app.start(env)
        ok, detail = await self.health.wait_healthy(self.cfg.app.health.start_grace)
        if not ok:
            raise AppError(detail)
        self.metrics.app_healthy.set(1)
        await self._event(EventKind.PROMOTED, f"serving {self.cfg.common_ip or 'without a common IP'}: {detail}")
        return f"promotion complete: {detail}"

    async def _promoting(self) -> Decision:
        event, detail = await self._hold(self._promote(), watch_app=False)
        return after_holding(event, detail, self.cfg.app.hold_off, self.cfg.lease.min_hold)

    async def _active(self) -> Decision:
        announcer = asyncio.create_task(self._announce_loop()) if self.cfg.announce.refresh > 0 else None
        try:
            event, detail = await self._hold(None, watch_app=True)
        finally:
            if announcer is not None:
                announcer.cancel()
        return after_holding(event, detail, self.cfg.app.hold_off, self.cfg.lease.min_hold)

    async def _announce_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.announce.refresh)
            with contextlib.suppress(NetopsError):
                await self.binder.announce()

    # ---- letting go ------------------------------------------------------------------------------------------

    async def _drop_ip(self) -> None:
        async with self._ip_lock:
            try:
                if await self.binder.unbind():
                    self.log.info("ip_unbound")
            except NetopsError as exc:
                self.log.error("ip_unbind_failed", error=str(exc))
            self.ip_bound = False
            self.metrics.ip_bound.set(0)

    async def _let_go(self, kind: EventKind, detail: str) -> None:
        """IP first (from then on no user traffic reaches this node), then the app, then the lease."""
        await self._drop_ip()
        await self.app.stop()
        self.metrics.app_healthy.set(0)
        if self.epoch is not None:
            with contextlib.suppress(StoreError):
                await self.store.release(
                    self.cfg.cluster, self.node.name, self.epoch, detail=detail, timeout=self.call_timeout
                )
            await self._event(kind, detail)
        self.epoch = self.fence_at = self.last_renewed_at = None
        self.metrics.epoch.set(0)
        self.metrics.lease_seconds_left.set(0)
        self.log = self._base_log
        self._not_before = self.clock.now() + self._pending.hold_off

    async def _demoting(self) -> Decision:
        decision = self._pending
        await self._let_go(EventKind.STEPPED_DOWN if not decision.then_stop else EventKind.DEMOTED, decision.reason)
        if decision.then_stop:
            return Decision(Role.STOPPED, f"stopped ({self.stop_reason})")
        return Decision(Role.STANDBY, f"stepped down; competing again in {decision.hold_off:g}s")

    async def _fenced(self) -> Decision:
        await self._let_go(EventKind.FENCED, self._pending.reason)
        if self.stop_requested.is_set():
            return Decision(Role.STOPPED, f"stopped ({self.stop_reason})")
        return Decision(Role.STANDBY, "fenced; back to standby")

    async def _event(self, kind: EventKind, detail: str) -> None:
        try:
            await self.store.record_event(
                self.cfg.cluster, self.node.name, kind.value, self.epoch, detail[:1000], timeout=self.call_timeout
            )
        except StoreError as exc:
            self.log.debug("event_not_recorded", kind=kind.value, error=str(exc))

    # ---- node row --------------------------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            self._report_now.clear()
            try:
                await self.store.record_node(
                    self.cfg.cluster,
                    self.node.name,
                    self.role.value,
                    self.health.healthy,
                    self.node.url,
                    __version__,
                    timeout=self.call_timeout,
                )
            except StoreError as exc:
                self.log.debug("node_row_not_recorded", error=str(exc))
            await wait_event(self._report_now, self.cfg.lease.heartbeat)
