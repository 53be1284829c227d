"""The agent: one loop, one handler per role, each taking the Decision that led to it and returning the next.

While the lease is held (a `Holding`), renewals run as tasks beside whatever the role is doing (binding,
starting the app), and the loop wakes for the earliest of: a renewal finishing, the next renewal time, the
fence deadline (on a CLOCK_BOOTTIME timer, so a suspend cannot postpone it), an application failure, a stop
request. Nothing it awaits can postpone the fence deadline: each wait is bounded by it, and a renewal stuck in
the database is simply left behind.

The common IP is level-triggered against the lease: while a renewal sent less than F ago succeeded and a kernel
lifetime of at least 1 s fits before F, the address must be bound; every successful renewal reconciles it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, assert_never

import structlog

from lease import (
    ControlStore,
    EventKind,
    HistoryStore,
    LeaseState,
    LeaseStore,
    StoreError,
)
from netops import AddressBinder, NetopsError

from .app import AppError, Application
from .clock import Clock, wait_either, wait_event
from .common_ip import CommonIp
from .config import Config, NodeConfig
from .control_rules import left_app_must_stop, standby_poll
from .failback import FailBack
from .health import HealthCheck
from .letgo import emergency_let_go, let_go
from .metrics import Metrics
from .operations import Operations
from .renewal import FATAL_STORE_ERRORS, MISCONFIGURED, apply_renewal, renew_lease
from .roles import (
    Decision,
    HoldEvent,
    Holding,
    Role,
    StandbyAction,
    StandbyPlan,
    after_holding,
    let_go_event,
    plan_retry,
    plan_standby,
    probe_ahead_at,
    renewal_due,
    warm_gate,
    warm_hold_off,
)
from .timing import MIN_RETRY_S
from .warm import WarmSupervisor

if TYPE_CHECKING:
    from .replication_schedule import ReplicationSchedule
    from .wake_send import Waker


IP_FAILURES_TO_STEP_DOWN = 2  # reconciliations in a row that could not manage the address (a lapse is not one)


class AgentStore(LeaseStore, HistoryStore, ControlStore, Protocol):
    """What the agent needs of the database: the lease, the history and the control state (SqlLeaseStore,
    MemoryLeaseStore)."""


class AgentFailed(Exception):
    """The agent stopped on an internal error after dropping the IP, stopping the app and releasing the lease."""


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
        instance: str | None = None,
        unproven_mark: str | None = None,
    ) -> None:
        """`unproven_mark`: a file in the state dir whose presence says this node stepped down for an application
        failure and has not served healthy since (fail-back skips it), kept across agent restarts."""
        self.cfg, self.node, self.store, self.binder, self.app, self.clock = cfg, node, store, binder, app, clock
        self.instance = instance
        self.metrics = metrics or Metrics()
        self.health = HealthCheck(cfg.app.health, app, clock)
        self.role = Role.STANDBY
        self.holding: Holding | None = None
        self.lease_view: LeaseState | None = None  # the lease as last read or acquired, for /status
        self.replication: ReplicationSchedule | None = None  # scheduled fos mirror, when configured (/status)
        self.renew_failing = False
        # A switchover's let-go stopped the app and kept the lease (no handover): fos stopped that app, not the
        # operator, so its restart on resuming is due even if maintenance came on meanwhile.
        self.restart_own_stop = False
        self.last_tick = clock.now()
        self.stop_requested = asyncio.Event()
        self.wake = asyncio.Event()  # a wake-up hint came (agent/wake.py): read the database now, as on a poll
        self.hints_heard = False  # a hint listener is up (service.serve): the holder's control read need not poll
        self.waker: Waker | None = None  # sends hints to the other nodes (wired by service.py; None: no hints)
        self.stop_reason = ""
        self.transition_reason = "starting"
        self.not_before = 0.0
        self.app_failed_at: float | None = None  # the last let-go, for an app failure, ended then (warm_hold_off)
        self._db_down_logged = False
        self._base_log = structlog.get_logger("fos.agent").bind(node=node.name, cluster=cfg.cluster)
        self.log = self._base_log.bind(role=self.role.value)
        self.ip = CommonIp(cfg, binder, clock, self.metrics, self.log)
        self.ops = Operations(self)
        self.failback = FailBack(self, unproven_mark)
        self.warm: WarmSupervisor | None = None  # warm mode: the application runs on this node all the agent's life
        if cfg.app.mode == "warm":
            env = {"FOS_NODE": node.name, "FOS_CLUSTER": cfg.cluster}  # no FOS_EPOCH: started before any lease
            self.warm = WarmSupervisor(
                app,
                self.health,
                cfg.app.health,
                clock,
                env,
                lambda: self.ops.control.maintenance,
                self._app_changed,
                serving=lambda: (
                    self.role is Role.ACTIVE or (self.role in (Role.DEMOTING, Role.FENCED) and self.ip.bound)
                ),
            )
        self.app_left_running = False  # STOPPED during maintenance with the app detached: not stopped at exit

    # ---- shorthands --------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return None if self.holding is None else self.holding.epoch

    @property
    def fence_at(self) -> float | None:
        return None if self.holding is None else self.holding.fence_at

    @property
    def ttl_ms(self) -> int:
        return int(self.cfg.lease.ttl * 1000)

    @property
    def call_timeout(self) -> float:
        return self.cfg.call_timeout

    @property
    def ip_bound(self) -> bool:
        return self.ip.bound

    def ip_bound_or_unmanaged(self) -> bool:
        return self.ip.bound or not self.ip.managed

    def _tick(self) -> None:
        self.last_tick = self.clock.now()

    def _app_changed(self, healthy: bool) -> None:
        """Warm mode: the supervisor saw the application's health change (the node row is written at once)."""
        self.metrics.app_healthy.set(1 if healthy else 0)
        self.ops.report_now.set()

    # ---- the loop -----------------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        self.stop_reason = why
        self.stop_requested.set()

    async def run(self) -> None:
        """Run until stopped. On an internal error (anything but a cancellation): drop the IP, stop the app,
        release the lease, then raise AgentFailed with one line."""
        reporter = asyncio.create_task(self.ops.report_loop())
        if self.warm is not None:
            self.warm.start()
        try:
            decision = Decision(Role.STANDBY, "agent started")
            self._enter(decision)
            while True:
                match self.role:
                    case Role.STANDBY:
                        decision = await self._standby(decision)
                    case Role.PROMOTING:
                        decision = await self._promoting(decision)
                    case Role.ACTIVE:
                        decision = await self._active(decision)
                    case Role.DEMOTING:
                        decision = await self._demoting(decision)
                    case Role.FENCED:
                        decision = await self._fenced(decision)
                    case Role.STOPPED if decision.leave_running and not await self.ops.maintenance_now():
                        decision = Decision(Role.DEMOTING, f"{decision.reason}; maintenance is over", then_stop=True)
                    case Role.STOPPED:
                        if decision.leave_running:
                            self.app.detach()  # its keeper must not end it when this process exits
                            self.app_left_running = True
                        break
                    case _:
                        assert_never(self.role)
                self._enter(decision)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.log.error("agent_failed", error=detail)
            await emergency_let_go(self, detail)
            raise AgentFailed(f"internal error, stopped after dropping the IP and the app: {detail}") from exc
        finally:
            if self.warm is not None:  # the agent stops: so does its application (unless left running above)
                await self.warm.close(stop_app=not self.app_left_running)
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self.health.close()
            await self.ip.close()
            await self.ops.close()
            with contextlib.suppress(StoreError):
                await self.ops.record_node(Role.STOPPED, None)

    def _enter(self, decision: Decision) -> None:
        self.transition_reason = decision.reason
        previous, self.role = self.role, decision.role
        self.log = self.ip.log = self._base_log.bind(role=decision.role.value, epoch=self.epoch)
        log = self.log.warning if "promotion failed" in decision.reason else self.log.info
        log("transition", previous=previous.value, reason=decision.reason)
        self.metrics.set_role(decision.role)
        self.metrics.epoch.set(self.epoch or 0)
        self.ops.report_now.set()

    async def _sleep_until(self, when: float) -> bool:
        """Sleep until local time `when`, until a stop is requested, or until a wake-up hint came (then the caller
        reads the database at once and judges by it, as on a poll: a hint alone decides nothing). True if a hint
        ended it."""
        await wait_either(self.stop_requested, self.wake, when - self.clock.now())
        hinted = self.wake.is_set()
        self.wake.clear()
        return hinted

    async def _pause_after_failure(self, seconds: float) -> None:
        """The wait after a failed database call: only a stop request ends it, never a wake-up hint (a flood of
        hints must not make a standby call a database that does not answer more often than it polls, as a holder
        reads no control state while its renewals fail). A hint that came meanwhile is spent: the read that
        follows comes after it."""
        await wait_event(self.stop_requested, seconds)
        self.wake.clear()

    # ---- standby ------------------------------------------------------------------------------------------

    async def _standby(self, _: Decision) -> Decision:
        poll = self.cfg.lease.heartbeat / 2
        self.failback.entered_standby()
        # A standby never has the common IP: remove a leftover (a crash, a fence whose unbind failed) when the
        # period begins and until that succeeded, but not on every poll: a second agent on this machine (another
        # node name by mistake) would otherwise keep deleting a live address that carries the same marker.
        leftovers_checked = False
        while not self.stop_requested.is_set():
            self._tick()
            self.clock.suspended_for()  # a standby has nothing to fence; just restart the comparison
            try:
                state = await self.store.read(self.cfg.cluster, timeout=self.call_timeout)
            except FATAL_STORE_ERRORS:
                raise
            except StoreError as exc:
                self._db_down(exc)
                self.failback.not_ready()
                if not leftovers_checked:
                    leftovers_checked = await self.ip.drop()
                await self._pause_after_failure(poll)
                continue
            self._db_up()
            self._saw(state)
            self.ops.observe(state)
            if self.warm is None and self.app.running() and (why := left_app_must_stop(state, self.node.name)):
                self.log.warning("left_app_stopped", why=why)  # adopted under maintenance; another may serve now
                await self.app.stop()
            poll = standby_poll(state, self.node.name, self.cfg.lease.heartbeat)
            hold_off = warm_hold_off(
                self.not_before,
                self.app_failed_at,
                not state.held,
                self.warm is not None,
                self.app_ready(),
                self.cfg.lease.heartbeat,
                self.cfg.lease.min_hold,
            )
            plan = plan_standby(state, self.node.name, self.instance, self.clock.now(), poll, hold_off)
            plan = warm_gate(plan, self.warm is not None, self.app_ready(), self.clock.now(), poll)
            if plan.action is StandbyAction.WAIT:
                not_ready = self.clock.now() < hold_off or not self.app_ready()
                await self.failback.consider(state, holding_off=not_ready)
            if plan.action is StandbyAction.WAIT:
                if not leftovers_checked:
                    leftovers_checked = await self.ip.drop()
                await self._wait_probing_ahead(plan)
                continue
            sent = self.clock.now()
            try:
                got = await self.store.try_acquire(
                    self.cfg.cluster,
                    self.node.name,
                    self.ttl_ms,
                    expected=state,
                    instance=self.instance,
                    timeout=self.call_timeout,
                )
            except FATAL_STORE_ERRORS:
                raise
            except StoreError as exc:
                self._db_down(exc)
                await self._pause_after_failure(min(poll, 0.1))
                continue
            if got.acquired:
                self.ops.acquired(state)
                took_over = state.holder is not None and (
                    state.holder != self.node.name or state.holder_instance != self.instance
                )
                self.holding = Holding.acquired(
                    got.epoch, sent, self.cfg.lease.ttl, self.cfg.lease.fence_margin, took_over
                )
                self._saw(None)
                self.metrics.set_holder(self.node.name)
                return Decision(Role.PROMOTING, f"{plan.reason}; acquired epoch {got.epoch}")
            # A lost race, or the row was not as read: plan from what the store saw, never retry at once.
            self._saw(got.seen)
            now = self.clock.now()
            await self._sleep_until(plan_retry(got.seen, self.node.name, self.instance, now, poll, self.not_before))
        return Decision(Role.STOPPED, f"stop requested ({self.stop_reason})")

    def app_ready(self) -> bool:
        """Warm mode: the application running on this node is healthy (always True in cold mode)."""
        return self.warm is None or self.warm.healthy

    async def _standby_sleep(self, until: float) -> None:
        """The standby's wait; in warm mode with the application unhealthy it also ends when it becomes healthy."""
        if self.warm is None or self.warm.healthy:
            await self._sleep_until(until)
        else:
            await self.warm.wait_healthy_or(self.stop_requested, until - self.clock.now())

    async def _wait_probing_ahead(self, plan: StandbyPlan) -> None:
        """Sleep until the plan's wake-up (or a stop request); when the lease it waits for expires soon, start on
        the way the conflict probe of the acquisition that may follow (CommonIp.probe_ahead, as a task: the read
        at the wake-up never waits for it)."""
        probing = self.ip.probes and not self.ip.probing_ahead and self.app_ready()
        start = probe_ahead_at(plan, self.clock.now(), self.cfg.probe_timeout, probing)
        if start is not None:
            # A hint during the wait for the round's start: read now (the round is planned again from that read).
            # One whose start has come already starts first (the hint then ends the sleep below at once).
            if start > self.clock.now() and (await self._sleep_until(start) or self.stop_requested.is_set()):
                return
            self.ip.start_probe_ahead()
        await self._standby_sleep(plan.wake_at)

    def _saw(self, state: LeaseState | None) -> None:
        self.lease_view = state
        if state is not None:
            self.metrics.set_holder(state.holder if state.held else None)

    def _db_down(self, exc: Exception) -> None:
        if not self._db_down_logged:
            (self.log.error if isinstance(exc, MISCONFIGURED) else self.log.warning)(
                "database_unavailable", error=str(exc)
            )
            self._db_down_logged = True

    def _db_up(self) -> None:
        if self._db_down_logged:
            self.log.info("database_available")
            self._db_down_logged = False

    # ---- holding the lease ----------------------------------------------------------------------------------

    async def _hold(self, work: Coroutine[Any, Any, str] | None, watch_app: bool) -> tuple[HoldEvent, str]:
        """Keep the lease while `work` runs (or, without work, until something happens)."""
        assert self.holding is not None
        next_renew = self.holding.last_sent + self.cfg.lease.heartbeat
        last_attempt = self.holding.last_sent
        ip_failures = 0
        reconcile_again = False
        control_at: float | None = self.clock.now()  # when to read the control state (besides after a renewal)
        half_beat = self.cfg.lease.heartbeat / 2
        tasks: dict[str, asyncio.Task[Any]] = {"stop": asyncio.create_task(self.stop_requested.wait())}
        tasks["wake"] = asyncio.create_task(self.wake.wait())
        hinted = False  # a wake-up hint asks for a control read (a command wrote a request): as soon as none runs
        control_failing = False  # the last control read failed: hints wait for the next renewal
        renewal_read_due = False  # a renewal succeeded since the last control read was started
        if work is not None:
            tasks["work"] = asyncio.create_task(work)
        if watch_app:  # warm: the supervisor's verdict (it is the only one checking the app)
            tasks["app"] = asyncio.create_task(self.warm.wait_unhealthy() if self.warm else self.health.watch())
        try:
            while True:
                self._tick()
                suspended = self.clock.suspended_for()
                if suspended:
                    return HoldEvent.SUSPENDED, f"{suspended:.1f}s"
                renew = tasks.get("renew")
                renewed = False
                if renew is not None and renew.done():
                    del tasks["renew"]
                    next_renew, lost = apply_renewal(self, renew.result())
                    if lost:
                        return HoldEvent.LEASE_LOST, "a renewal found another epoch or holder"
                    renewed = not self.renew_failing
                now = self.clock.now()
                self.metrics.lease_seconds_left.set(max(0.0, self.holding.fence_at - now))
                if now >= self.holding.fence_at:
                    return HoldEvent.FENCE_DEADLINE, f"{now - self.holding.fence_at:.3f}s past it"
                ip = tasks.get("ip")
                if ip is not None and ip.done():
                    del tasks["ip"]
                    failure = ip.exception()
                    if isinstance(failure, NetopsError):
                        ip_failures += 1
                        self.log.warning("ip_reconcile_failed", error=str(failure), failures=ip_failures)
                        if ip_failures >= IP_FAILURES_TO_STEP_DOWN:
                            return HoldEvent.IP_FAILED, str(failure)
                    elif failure is not None:
                        raise failure  # unexpected: ends the agent through run()'s handler
                    else:
                        ip_failures = 0
                if (renewed or reconcile_again) and "ip" not in tasks:
                    # As a task: a slow netlink call must not hold up the fence timer or the next renewal.
                    tasks["ip"] = asyncio.create_task(self.ip.reconcile(lambda: self.holding))
                    reconcile_again = False
                elif renewed:
                    reconcile_again = True  # one is running with an older Holding: go again when it ends
                # The control state (a switchover, maintenance, disable), read in a task of its own (the loop never
                # waits for it, and a read uses its own connection): right after a renewal, at once on a wake-up
                # hint (a command that writes a request sends one), and at a scheduled switchover's time; without a
                # hint listener (wake_port = 0, or its port taken) also half a heartbeat after each read, so that a
                # request is seen within half a heartbeat without them (with them, a lost hint costs at most a
                # heartbeat: one read less a heartbeat keeps an idle holder's CPU down, issue #14). Not while
                # renewals fail: no extra calls into a database that does not answer.
                if renewed:  # a read after each renewal, also when one was running then (it goes after it)
                    control_failing, renewal_read_due = False, True
                if tasks["wake"].done():  # (the listener rate-limits hints: agent/wake.py)
                    self.wake.clear()
                    # After a failed control read a hint waits for the next renewal's read: a flood must not make
                    # the holder call a database whose reads fail at the hints' rate.
                    tasks["wake"], hinted = asyncio.create_task(self.wake.wait()), not control_failing
                timer_due = control_at is not None and now >= control_at and not self.renew_failing
                if "control" not in tasks and (renewal_read_due or timer_due or (hinted and not self.renew_failing)):
                    tasks["control"] = asyncio.create_task(self.ops.read_as_holder(acting=work is None))
                    control_at, hinted, renewal_read_due = None, False, False
                control = tasks.get("control")
                if control is not None and control.done():
                    del tasks["control"]
                    plan = control.result()
                    control_failing = plan.read_failed
                    hinted = hinted and not control_failing
                    app_dropped = watch_app and "app" not in tasks
                    ended = self.ops.holder_event(plan, acting=work is None, app_dropped=app_dropped)
                    if ended is not None:
                        return ended
                    between = plan.wake_in or (None if self.hints_heard else half_beat)
                    again = hinted or renewal_read_due
                    control_at = now if again else None if between is None else now + min(between, half_beat)
                if tasks["stop"].done():
                    return HoldEvent.STOP_REQUESTED, self.stop_reason
                if "work" in tasks and tasks["work"].done():
                    exc = tasks["work"].exception()
                    if exc is None:
                        return HoldEvent.WORK_DONE, str(tasks["work"].result())
                    return HoldEvent.WORK_FAILED, str(exc)
                if "app" in tasks and tasks["app"].done():
                    self.metrics.app_healthy.set(0)
                    if not self.ops.control.maintenance:
                        return HoldEvent.APP_FAILED, str(tasks["app"].result())
                    # Maintenance: no step-down, no restart; looked at again when maintenance ends.
                    self.log.warning("app_failed_during_maintenance", detail=str(tasks.pop("app").result()))
                due = renewal_due(
                    next_renew, last_attempt, self.ip.expires_at, self.cfg.lease.heartbeat, self.call_timeout
                )
                if "renew" not in tasks and self.clock.now() >= due:
                    last_attempt = self.clock.now()
                    tasks["renew"] = asyncio.create_task(renew_lease(self, self.holding.epoch))
                deadline = self.holding.fence_at if "renew" in tasks else min(self.holding.fence_at, due)
                if control_at is not None and not self.renew_failing:
                    deadline = min(deadline, max(control_at, now + MIN_RETRY_S))
                timer = asyncio.create_task(self.clock.sleep_until(deadline))
                try:
                    await asyncio.wait([*tasks.values(), timer], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
        finally:
            for task in tasks.values():
                task.cancel()
            # Work (promotion) and a reconciliation must be fully unwound before the caller drops the IP and
            # stops the app (the binder finishes its netlink work before a cancellation returns).
            unwinding = [tasks[k] for k in ("work", "ip") if k in tasks]
            if unwinding:
                await asyncio.wait(unwinding)

    # ---- promoting / active -----------------------------------------------------------------------------

    async def _promote(self) -> str:
        holding = self.holding
        assert holding is not None
        await self.ip.claim(holding, announce=False)
        # The announcement (announce.count x interval) goes out beside the app's start, not before it: the app
        # still starts only once the address is bound, and the promotion ends once both are done.
        announcing = asyncio.create_task(self.ip.announce(holding))
        bound = None
        if self.ip.managed:  # for `fos history`: when the address came up (recorded while the app starts)
            bound = asyncio.create_task(self.event(EventKind.IP_BOUND, f"{self.cfg.common_ip} bound", holding.epoch))
        try:
            detail = await self._start_app(holding)
            await announcing
        except BaseException:  # a failed start or a fence: nothing may wait for the event
            if bound is not None:
                bound.cancel()
            raise
        finally:
            announcing.cancel()  # the binder ends its raw-socket work before the cancel returns
            with contextlib.suppress(asyncio.CancelledError):
                await announcing
        if bound is not None:
            await bound  # bounded by the call timeout; in order before PROMOTED
        await self.event(EventKind.PROMOTED, f"serving {self.cfg.common_ip or 'without a common IP'}: {detail}")
        self.ops.serving(holding)
        return f"promotion complete: {detail}"

    async def _start_app(self, holding: Holding, resume: bool = False) -> str:
        """Start the app (nothing if it runs: adopted, or still running) and wait until it is healthy. Warm mode:
        nothing to start; a promotion goes on only if the app is healthy now (else it fails at once: another node's
        may be), a resume in place waits for the supervisor's restart like a cold start."""
        env = {"FOS_NODE": self.node.name, "FOS_CLUSTER": self.cfg.cluster, "FOS_EPOCH": str(holding.epoch)}
        own_stop, self.restart_own_stop = self.restart_own_stop, False
        if self.warm is not None:  # it runs already (the standby competed only while it was healthy): no 2nd copy
            ok, detail = await self.warm.wait_healthy(self.cfg.app.health.start_grace if resume else 0.0)
        else:
            if self.ops.control.maintenance and not own_stop:  # fos starts no app then (the operator may upgrade)
                self.log.info("app_not_started_during_maintenance")
            else:
                await self.app.start(env)
            ok, detail = await self.health.wait_healthy(self.cfg.app.health.start_grace)
        if not ok:
            raise AppError(detail)
        self.metrics.app_healthy.set(1)
        return detail

    async def _resume(self) -> str:
        """Already serving (the IP stays bound by the renewals): only the application, started in place."""
        assert self.holding is not None
        if self.app.unattached():  # adopted from an older keeper, which would outlive us: restart it under ours
            await (self.warm.restart("adopted under an older keeper") if self.warm else self.app.stop())
        return f"application running again: {await self._start_app(self.holding, resume=True)}"

    async def _promoting(self, decision: Decision) -> Decision:
        event, detail = await self._hold(self._resume() if decision.resume else self._promote(), watch_app=False)
        return self._after_holding(event, detail)

    def _after_holding(self, event: HoldEvent, detail: str) -> Decision:
        decision = after_holding(event, detail, self.cfg.app.hold_off, self.cfg.lease.min_hold, self.ops.modes)
        self.failback.after_holding(event)
        return decision

    async def _active(self, _: Decision) -> Decision:
        announcer = asyncio.create_task(self._announce_loop()) if self.cfg.announce.refresh > 0 else None
        try:
            event, detail = await self._hold(None, watch_app=True)
        finally:
            if announcer is not None:
                announcer.cancel()
                # The binder finishes (or stops) its raw-socket work before the cancel returns: no gratuitous
                # ARP may follow the drop of the IP.
                with contextlib.suppress(asyncio.CancelledError):
                    await announcer
        return self._after_holding(event, detail)

    async def _announce_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.announce.refresh)
            await self.ip.announce(self.holding)

    # ---- letting go ---------------------------------------------------------------------------------------

    async def _demoting(self, decision: Decision) -> Decision:
        handed = await let_go(self, let_go_event(decision), decision)
        self.restart_own_stop = decision.handover_to is not None and not handed and not decision.then_stop
        if self.restart_own_stop:
            self.log.warning("app_restart_due", why="a switchover stopped it and did not hand over")
        if decision.then_stop:
            return Decision(Role.STOPPED, f"stopped ({self.stop_reason})")
        if handed:
            return Decision(Role.STANDBY, f"handed the lease over to {decision.handover_to}")
        if decision.handover_to is not None:
            return Decision(Role.STANDBY, f"the handover to {decision.handover_to} was refused; competing again")
        return Decision(Role.STANDBY, f"stepped down; competing again in {decision.hold_off:g}s")

    async def _fenced(self, decision: Decision) -> Decision:
        await let_go(self, EventKind.FENCED, decision)
        self.restart_own_stop = False
        if self.stop_requested.is_set():
            return Decision(Role.STOPPED, f"stopped ({self.stop_reason})")
        return Decision(Role.STANDBY, "fenced; back to standby")

    async def event(self, kind: EventKind, detail: str, epoch: int | None = None) -> None:
        """Record an event (best effort: a database error is only logged)."""
        try:
            await self.store.record_event(
                self.cfg.cluster,
                self.node.name,
                kind.value,
                epoch if epoch is not None else self.epoch,
                detail[:1000],
                timeout=self.call_timeout,
            )
        except StoreError as exc:
            self.log.debug("event_not_recorded", kind=kind.value, error=str(exc))
