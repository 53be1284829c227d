"""Automatic fail-back (`[cluster] failback = "auto"`): the preferred node (highest `[[nodes]] priority`), once it
has been a ready standby for `failback_delay` seconds while a node of lower priority holds, requests a switchover
to itself (by "failback"), never by waiting for an expiry. A node that stepped down for an application failure is
not preferred again until it has served healthy for the delay (kept in this agent's memory). The rule is
agent/control_rules.plan_failback; this is its bookkeeping and I/O, on the standby's loop.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lease import LeaseState, StoreError

from .control_rules import FAILBACK_BY, FailbackStep, plan_failback
from .roles import HoldEvent
from .wake import HintKind

if TYPE_CHECKING:
    from .runner import Agent


MAX_ATTEMPTS = 3  # fail-back requests that did not make this node the holder before it stops asking
RETRY_AFTER_DELAYS = 10  # given up: asked again after this many failback_delay, or at once when the holder changes


class FailBack:
    def __init__(self, agent: Agent, unproven_mark: str | None = None) -> None:
        """`unproven_mark`: the file that keeps `unproven` across agent restarts (None: memory only)."""
        self.agent = agent
        self.ready_since: float | None = None  # a ready standby (reads answered, no hold-off) since then
        self.serving_since: float | None = None
        self._mark = unproven_mark
        self._unproven = unproven_mark is not None and os.path.exists(unproven_mark)
        self._next_try = 0.0
        self.attempts = 0  # fail-back requests since this node last served: capped at MAX_ATTEMPTS
        self._given_up: tuple[float, str | None] | None = None  # when, and who held then

    @property
    def unproven(self) -> bool:
        """Stepped down for an app failure and has not served healthy for the delay since."""
        return self._unproven

    @unproven.setter
    def unproven(self, value: bool) -> None:
        if value == self._unproven:
            return
        self._unproven = value
        if self._mark is None:
            return
        try:  # a small local file, written only when the mark changes
            if value:
                with open(self._mark, "w") as f:
                    f.write("stepped down for an application failure; not yet healthy for failback_delay\n")
            else:
                os.unlink(self._mark)
        except OSError as exc:
            self.agent.log.warning("failback_mark_not_kept", path=self._mark, error=str(exc))

    @property
    def auto(self) -> bool:
        return self.agent.cfg.policy.failback == "auto"

    def entered_standby(self) -> None:
        self.ready_since = None

    def not_ready(self) -> None:
        self.ready_since = None

    def after_holding(self, event: HoldEvent) -> None:
        """Holding ended (or the promotion completed) for `event`: an application failure makes this node
        unproven; having served healthy for the delay proves it again."""
        now, delay = self.agent.clock.now(), self.agent.cfg.policy.failback_delay
        if self.serving_since is not None and now - self.serving_since >= delay:
            self.unproven = False
        if event is HoldEvent.WORK_DONE:
            self.serving_since, self.attempts, self._given_up = now, 0, None
            return
        self.serving_since = None
        if event in (HoldEvent.APP_FAILED, HoldEvent.WORK_FAILED) and not self.agent.ops.control.maintenance:
            self.unproven = True  # (during maintenance the operator's upgrade stops the app: no step-down then)

    def _retry_if_due(self, now: float, holder: str | None) -> None:
        """Given up: start counting attempts afresh once RETRY_AFTER_DELAYS x failback_delay have passed, or when
        another node holds (the refusal may have been that holder's, e.g. its config), and say which."""
        if self._given_up is None or self.attempts < MAX_ATTEMPTS:
            return
        since, then_held = self._given_up
        if holder is not None and holder != then_held:
            why = f"the holder changed ({then_held} -> {holder})"
        elif now - since >= RETRY_AFTER_DELAYS * self.agent.cfg.policy.failback_delay:
            why = f"{RETRY_AFTER_DELAYS} x failback_delay passed since it gave up"
        else:
            return
        self.attempts, self._given_up = 0, None
        self.agent.log.info("failback_retrying", why=why)

    async def consider(self, state: LeaseState, holding_off: bool) -> None:
        """After a standby's read: request the fail-back when the rule says so (at most one attempt per
        heartbeat; the request's compare-and-set refuses a second pending one)."""
        a = self.agent
        now = a.clock.now()
        holder = state.holder if state.held else None
        self._retry_if_due(now, holder)
        if not self.auto or holding_off or self.unproven or self.attempts >= MAX_ATTEMPTS:
            self.ready_since = None
            return
        if self.ready_since is None:
            self.ready_since = now
        priorities = {n.name: n.priority for n in a.cfg.nodes}
        if holder is None or priorities.get(holder, 0) >= a.node.priority or now < self._next_try:
            return
        if now - self.ready_since < a.cfg.policy.failback_delay:
            return
        self._next_try = now + a.cfg.lease.heartbeat
        try:
            rows = await a.store.list_nodes(a.cfg.cluster, timeout=a.call_timeout)
            step, why = plan_failback(
                a.node.name,
                priorities,
                holder,
                state.control,
                rows,
                now - self.ready_since,
                a.cfg.policy.failback_delay,
                a.cfg.lease.heartbeat,
                a.call_timeout,
            )
            if step is FailbackStep.REQUEST:
                requested = await a.store.request_switchover(
                    a.cfg.cluster, a.node.name, 0, FAILBACK_BY, timeout=a.call_timeout
                )
                a.log.info("failback_requested" if requested else "failback_not_requested", reason=why)
                if requested and a.waker is not None:
                    a.waker.hint(HintKind.CONTROL)  # the holder reads the request now, not at its next poll
                if requested:
                    # Refused or failed (the holder's config disagrees, our start failed): not again before
                    # another delay, and not at all after MAX_ATTEMPTS until this node serves again, the holder
                    # changes or RETRY_AFTER_DELAYS x failback_delay have passed (_retry_if_due).
                    self.attempts += 1
                    self._next_try = now + max(a.cfg.policy.failback_delay, a.cfg.lease.heartbeat)
                    if self.attempts >= MAX_ATTEMPTS:
                        self._given_up = (now, holder)
                        a.log.warning(
                            "failback_given_up",
                            attempts=self.attempts,
                            holder=holder,
                            retry_in_s=RETRY_AFTER_DELAYS * a.cfg.policy.failback_delay,
                        )
        except StoreError as exc:
            a.log.debug("failback_failed", error=str(exc))
