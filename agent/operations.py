"""The agent's side of the operator's intent stored beside the lease (switchover, maintenance, disable, anti-flap):
what it read last, the holder's control read (after each renewal and on a wake-up hint; with no hint listener also
half a heartbeat after each read), the handover, the
node row, and the events of a switchover and of anti-flap.
The decisions are agent/control_rules.py's; the runner calls in here at a few points and never waits for
anything here on the path of a renewal or the fence timer (the holder's read runs as a task of its own).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, assert_never

from lease import EventKind, LeaseState, StoreError
from lease.model import Control, sees_states

from . import __version__
from .clock import wait_event
from .control_rules import (
    HOLD_OFF_ROLE,
    HolderAction,
    HolderPlan,
    is_flapping,
    needs_rows,
    plan_holder,
    reminder_due,
    takeovers_since_enable,
)
from .roles import HoldEvent, Holding, Modes, Role
from .timing import NODE_ROW_HEARTBEATS

if TYPE_CHECKING:
    from .runner import Agent


class Operations:
    """The control state as this agent last saw it, and the I/O of acting on it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.control = Control()  # as last read (by the standby's poll or the holder's control read)
        self.reminded = 0  # the last maintenance reminder recorded (its ordinal)
        self.switchover_at: float | None = None  # local time a switchover to us was requested, as last read
        self.by_handover = False  # the current holding began with a lease handed over to us
        self.handed_to: str | None = None  # we handed the lease to this node and have not seen it hold since
        self.handed_at: float | None = None
        self.handing_request: int | None = None  # Switchover.id of the request the holder is handing over for
        self._due_seen: tuple[str | None, str | None, float, float] | None = None  # to, by, asked at, late by
        self.report_now = asyncio.Event()  # set at every transition: the node row is written at once
        self._background: set[asyncio.Task[None]] = set()

    def _seen(self, control: Control) -> None:
        self.control = control
        self.agent.metrics.set_control(sees_states(control.sees()) or frozenset())

    @property
    def modes(self) -> Modes:
        return Modes(maintenance=self.control.maintenance, failover_off=self.control.failover_off)

    def sees(self) -> str:
        """The node row's `sees`: the control state this agent acts on."""
        return self.control.sees()

    # ---- the node row -------------------------------------------------------------------------------------

    async def record_node(self, role: Role, healthy: bool | None) -> None:
        """Write this agent's node row: a standby holding off after a step-down reports "hold_off" (a switchover
        to it is refused), and `sees` tells which control state it acts on."""
        a = self.agent
        shown = role.value
        if role is Role.STANDBY and a.clock.now() < a.not_before:
            shown = HOLD_OFF_ROLE
        await a.store.record_node(
            a.cfg.cluster,
            a.node.name,
            shown,
            healthy,
            a.node.url,
            __version__,
            instance=a.instance,
            sees=self.sees(),
            timeout=a.call_timeout,
        )

    async def report_loop(self) -> None:
        """The node row: at once after a transition or a change of app health or of the control state seen,
        else every NODE_ROW_HEARTBEATS heartbeats (a database write per heartbeat per idle agent is waste)."""
        a = self.agent
        heartbeat = a.cfg.lease.heartbeat
        written: tuple[Role, bool | None, str] | None = None
        written_at = 0.0
        while True:
            self.report_now.clear()
            now = (a.role, a.health.healthy, self.sees())
            if now != written or a.clock.now() - written_at >= (NODE_ROW_HEARTBEATS - 0.5) * heartbeat:
                written_at = a.clock.now()
                try:
                    await self.record_node(a.role, a.health.healthy)
                    written = now
                except StoreError as exc:
                    written = None
                    a.log.debug("node_row_not_recorded", error=str(exc))
            await wait_event(self.report_now, heartbeat)

    # ---- what was read ----------------------------------------------------------------------------------

    def observe(self, state: LeaseState) -> None:
        """A standby's read: remember the control state, and when a switchover to us was requested."""
        me, now = self.agent.node.name, self.agent.clock.now()
        self._seen(state.control)
        sw = state.control.switchover
        if sw is not None and sw.to == me:
            self.switchover_at = now - sw.requested_age_ms / 1000
        elif state.reserved_for != me:
            self.switchover_at = None
        if self.handed_to is not None and state.holder == self.handed_to:
            self.handed_to = None  # the target took it: our handover is done

    def acquired(self, state: LeaseState) -> None:
        """The standby acquired after reading `state`."""
        me, control = self.agent.node.name, state.control
        # A lease reserved for us is a switchover's handover, unless a gate under which no handover can happen is
        # on: then it is our own release under maintenance or with failover off, which keeps our node in
        # handover_to (no SWITCHOVER_DONE for that).
        self.by_handover = state.reserved_for == me and not (control.maintenance or control.failover_off)
        if self.by_handover and self.switchover_at is None:  # we never saw the request: count from the handover
            remaining = (state.remaining_ms or 0) / 1000
            self.switchover_at = self.agent.clock.now() - max(0.0, self.agent.cfg.lease.ttl - remaining)

    # ---- the holder ---------------------------------------------------------------------------------------

    async def read_as_holder(self, acting: bool) -> HolderPlan:
        """The holder's control read (one lease read, plus the node rows for a due switchover): the plan for
        the runner. With `acting` (ACTIVE), a failed or stale switchover is cancelled here with its event; while
        promoting such a request waits for the next read. A database error reads as "nothing to do"."""
        a = self.agent
        try:
            state = await a.store.read(a.cfg.cluster, timeout=a.call_timeout)
            was_on = self.control.maintenance
            self._seen(state.control)
            rows = None
            if needs_rows(state.control) and acting:
                rows = await a.store.list_nodes(a.cfg.cluster, timeout=a.call_timeout)
            known = [n.name for n in a.cfg.nodes]
            first_late = self._first_late(state.control)
            priorities = {n.name: n.priority for n in a.cfg.nodes}
            plan = plan_holder(
                state.control, a.node.name, known, rows, a.cfg.lease.heartbeat, a.call_timeout, first_late, priorities
            )
            await self._remind(state.control, was_on)
            kind = plan.cancel_kind
            if kind is not None and acting:
                a.log.warning("switchover_dropped", kind=kind.value, detail=plan.detail)
                sw = state.control.switchover
                await a.store.cancel_switchover(
                    a.cfg.cluster,
                    a.node.name,
                    kind=kind,
                    detail=plan.detail[:400],
                    request_id=sw.id if sw is not None else None,
                    timeout=a.call_timeout,
                )
            return plan
        except StoreError as exc:
            a.log.debug("control_read_failed", error=str(exc))
            return HolderPlan(HolderAction.KEEP, read_failed=True)

    def _first_late(self, control: Control) -> float | None:
        """How late the pending switchover was when first seen due by this holder (None: first seen now). The
        request is known by its target, author and time of request (local, within half a second)."""
        sw, now = control.switchover, self.agent.clock.now()
        if sw is None or not sw.due:
            self._due_seen = None
            return None
        asked = now - sw.requested_age_ms / 1000
        seen = self._due_seen
        if seen is not None and (seen[0], seen[1]) == (sw.to, sw.by) and abs(seen[2] - asked) < 0.5:
            return seen[3]
        self._due_seen = (sw.to, sw.by, asked, -sw.due_in_ms / 1000)
        return None

    async def _remind(self, control: Control, was_on: bool) -> None:
        if not control.maintenance:
            self.reminded = 0
            return
        if not was_on:
            self.agent.log.info("maintenance_on", by=control.maintenance_by)
        due = reminder_due(control.maintenance_ms, self.agent.cfg.policy.remind_after, self.reminded)
        if due is not None:
            self.reminded = due
            hours = (control.maintenance_ms or 0) / 3_600_000
            await self.agent.event(
                EventKind.MAINTENANCE_REMINDER,
                f"maintenance mode on for {hours:.1f} h (by {control.maintenance_by or '?'}): "
                "run `fos maintenance off` when done",
            )

    async def read_control(self) -> Control:
        """The control state read again now, for a step that must not act on one a heartbeat old (a stop that
        would leave the app running, a handover after a slow let-go); the last known state if the database does
        not answer within the call timeout."""
        a = self.agent
        try:
            self._seen((await a.store.read(a.cfg.cluster, timeout=a.call_timeout)).control)
        except StoreError as exc:
            a.log.warning("control_read_failed", error=str(exc))
        return self.control

    async def maintenance_now(self) -> bool:
        """Is maintenance mode still on (read again)?"""
        return (await self.read_control()).maintenance

    def holder_event(self, plan: HolderPlan, acting: bool, app_dropped: bool) -> tuple[HoldEvent, str] | None:
        """What ends the holder's period after a control read, if anything."""
        match plan.action:
            case HolderAction.LET_GO:
                return HoldEvent.DISABLED, plan.detail
            case HolderAction.HAND_OVER if acting and plan.to is not None:
                sw = self.control.switchover
                self.handing_request = sw.id if sw is not None else None  # that request and no later one
                return HoldEvent.SWITCHOVER, plan.to
            case HolderAction.KEEP | HolderAction.HAND_OVER | HolderAction.FAIL | HolderAction.STALE:
                pass  # handing over waits until ACTIVE; a failed or stale request was cancelled by the read
            case _:
                assert_never(plan.action)
        if app_dropped and not self.control.maintenance:
            return HoldEvent.MAINTENANCE_OVER, "the application had failed during maintenance"
        if acting and not self.control.maintenance and self.agent.app.unattached():
            return HoldEvent.MAINTENANCE_OVER, "the application adopted from an older agent gets a keeper of ours"
        return None

    async def hand_over(self, holding: Holding, to: str, detail: str) -> bool:
        """Give the lease to `to` (the IP is confirmed gone and the app stopped), reserved for a ttl."""
        a = self.agent
        try:
            ok = await a.store.handover(
                a.cfg.cluster,
                a.node.name,
                holding.epoch,
                to,
                a.ttl_ms,
                detail=detail[:200],
                request_id=self.handing_request,
                timeout=a.call_timeout,
            )
        except StoreError as exc:
            a.log.warning("handover_failed", to=to, error=str(exc))
            return False
        a.log.info("lease_handed_over" if ok else "lease_already_gone", to=to, epoch=holding.epoch)
        if ok:
            self.handed_to, self.handed_at = to, a.clock.now()
        return ok

    # ---- serving ------------------------------------------------------------------------------------------

    def serving(self, holding: Holding) -> None:
        """The promotion completed (IP bound, app healthy): the switchover's and anti-flap's bookkeeping, in the
        background (nothing here may delay the holder)."""
        self.spawn(self._serving(holding))

    async def _serving(self, holding: Holding) -> None:
        a = self.agent
        now = a.clock.now()
        if self.by_handover:
            since = self.switchover_at
            took = f"{now - since:.2f}s after the request" if since is not None else "after a handover"
            await a.event(EventKind.SWITCHOVER_DONE, f"switchover done: {a.node.name} serves {took}", holding.epoch)
            self.by_handover, self.switchover_at = False, None
            return
        handed_recently = self.handed_at is not None and now - self.handed_at < 2 * a.cfg.lease.ttl
        if self.handed_to is not None and handed_recently:
            await a.event(
                EventKind.SWITCHOVER_FAILED,
                f"{self.handed_to} did not take the handed-over lease within {a.cfg.lease.ttl:g}s: "
                f"{a.node.name} serves again",
                holding.epoch,
            )
        self.handed_to = None
        if not (self.control.failover_off or self.control.maintenance):
            await self._count_flaps()

    async def _count_flaps(self) -> None:
        a, flap = self.agent, self.agent.cfg.policy
        try:
            events = await a.store.list_events(
                a.cfg.cluster,
                limit=flap.max_takeovers + 100,
                since_ms=int(flap.flap_window * 1000),
                timeout=a.call_timeout,
            )
            count = takeovers_since_enable([(e.kind, e.node) for e in events], self.control.maintenance)
            if is_flapping(count, flap.max_takeovers):
                reason = (
                    f"{count} take-overs within {flap.flap_window:g}s (more than flap.max_takeovers = "
                    f"{flap.max_takeovers}): automatic failover is off until `fos enable`"
                )
                if await a.store.set_failover_off(a.cfg.cluster, a.node.name, reason, timeout=a.call_timeout):
                    a.log.error("flapping", takeovers=count, window=flap.flap_window)
        except StoreError as exc:
            a.log.debug("flap_count_failed", error=str(exc))

    def spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Let the background bookkeeping finish (each call is bounded by the call timeout)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=2 * self.agent.call_timeout + 0.1)
