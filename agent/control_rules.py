"""Pure rules for the operator's intent and the policies stored beside the lease (lease.model.Control): what the
holder does about a pending switchover or a disabled cluster, how fast a standby polls, when a node asks for a
fail-back, when take-overs count as flapping, when maintenance deserves a reminder. No I/O: agent/operations.py
and agent/failback.py feed in what they read and act on the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import assert_never

from lease.model import Control, EventKind, LeaseState, NodeRecord

FAST_POLL_S = 0.05  # a standby's poll while a switchover to it is due: it takes the handed-over lease at once
STALE_AFTER_HEARTBEATS = 2  # a switchover first seen more than this many heartbeats past its time is dropped
ALIVE_WITHIN_HEARTBEATS = 3  # a node row older than this (plus a call timeout) is not a live agent
HOLD_OFF_ROLE = "hold_off"  # what a standby holding off after a step-down writes as its node row's role
# Take-overs that count as flapping: a fault take-over (another node's lease expired) and a step-down (whose
# release the next node acquires). Not a handover (an operator's switchover), not a graceful stop (DEMOTED),
# not a fence (its take-over is already counted once as TAKEOVER).
FLAP_KINDS = (EventKind.TAKEOVER.value, EventKind.STEPPED_DOWN.value)
FAILBACK_BY = "failback"  # Switchover.by of a request made by the fail-back policy
ACQUISITIONS = (EventKind.ACQUIRED.value, EventKind.TAKEOVER.value, EventKind.RESUMED.value)


class HolderAction(enum.Enum):
    KEEP = "keep"  # nothing to do (maybe look again at a scheduled switchover's time: wake_in)
    HAND_OVER = "hand_over"  # let go like a graceful stop, then hand the lease to `to`
    FAIL = "fail"  # cancel the pending switchover as SWITCHOVER_FAILED (detail says why)
    STALE = "stale"  # cancel it as SWITCHOVER_STALE: found too long after its time
    LET_GO = "let_go"  # the cluster is disabled: drop the IP, stop the app, release


@dataclass(frozen=True)
class HolderPlan:
    action: HolderAction
    to: str | None = None
    detail: str = ""
    wake_in: float | None = None  # seconds from the read until a scheduled switchover is due
    read_failed: bool = False  # the read itself failed (a database error): KEEP, and no hint-driven retry

    @property
    def cancel_kind(self) -> EventKind | None:
        """The event kind the pending request is cancelled with, for FAIL and STALE."""
        match self.action:
            case HolderAction.FAIL:
                return EventKind.SWITCHOVER_FAILED
            case HolderAction.STALE:
                return EventKind.SWITCHOVER_STALE
            case HolderAction.KEEP | HolderAction.HAND_OVER | HolderAction.LET_GO:
                return None
            case _:
                assert_never(self.action)


def node_alive(row: NodeRecord, heartbeat: float, call_timeout: float) -> bool:
    """A node row written by a running agent within ALIVE_WITHIN_HEARTBEATS heartbeats (it writes one each)."""
    recent = ALIVE_WITHIN_HEARTBEATS * heartbeat + call_timeout
    return row.role != "stopped" and row.last_seen_age_s is not None and row.last_seen_age_s <= recent


def target_problem(
    to: str | None, me: str, known: Collection[str], rows: list[NodeRecord], heartbeat: float, call_timeout: float
) -> str | None:
    """Why `to` cannot take the lease over from `me` now (None: it can): it must be another configured node
    whose agent is running and is a ready standby (not holding off after an application failure)."""
    if to is None:
        return "the request names no target"
    if to == me:
        return f"{to} already holds the lease"
    if to not in known:
        return f"{to} is not a node of this cluster"
    row = next((r for r in rows if r.node == to), None)
    if row is None:
        return f"{to} has never reported (no node row)"
    if not node_alive(row, heartbeat, call_timeout):
        age = "never" if row.last_seen_age_s is None else f"{row.last_seen_age_s:.1f}s ago"
        return f"{to} is not alive (role {row.role}, last seen {age})"
    if row.role == HOLD_OFF_ROLE:
        return f"{to} is holding off after an application failure"
    if row.role != "standby":
        return f"{to} is not a ready standby (role {row.role})"
    if row.app_healthy is False:  # a warm standby whose app is sick would not take the reserved lease for a ttl
        return f"{to} reports its application unhealthy"
    return None


def plan_holder(
    control: Control,
    me: str,
    known: Collection[str],
    rows: list[NodeRecord] | None,
    heartbeat: float,
    call_timeout: float,
    first_late: float | None = None,
    priorities: Mapping[str, int] | None = None,
) -> HolderPlan:
    """What the holder does about the control state it just read. `rows` (the node rows) are needed only for a
    due switchover (None: not read; the caller reads them when `needs_rows` says so). `first_late`: how late
    the pending switchover was when this holder first saw it due (a request seen in time while promoting is not
    stale once the promotion is over); None: first seen now. `priorities`: [[nodes]] priority from this node's
    own config; a fail-back request (by FAILBACK_BY) is refused unless they rank its target above this node (the
    nodes' files disagreeing would otherwise make them fail back and forth for ever)."""
    if control.disabled:
        return HolderPlan(HolderAction.LET_GO, detail=f"the cluster is disabled (by {control.disabled_by or '?'})")
    sw = control.switchover
    if sw is None:
        return HolderPlan(HolderAction.KEEP)
    if not sw.due:
        return HolderPlan(HolderAction.KEEP, wake_in=sw.due_in_ms / 1000)
    late = -sw.due_in_ms / 1000 if first_late is None else first_late
    if late > STALE_AFTER_HEARTBEATS * heartbeat:
        return HolderPlan(
            HolderAction.STALE,
            sw.to,
            f"switchover to {sw.to} found {late:.1f}s after its time (more than {STALE_AFTER_HEARTBEATS} "
            "heartbeats): dropped",
        )
    if control.maintenance:
        return HolderPlan(HolderAction.FAIL, sw.to, "maintenance mode is on: no switchover")
    if control.failover_off:  # the acquire statement would refuse the target: nobody would serve
        return HolderPlan(HolderAction.FAIL, sw.to, "automatic failover is off (flapping): run `fos enable` first")
    problem = target_problem(sw.to, me, known, rows or [], heartbeat, call_timeout)
    if problem is not None:
        return HolderPlan(HolderAction.FAIL, sw.to, f"switchover to {sw.to} refused: {problem}")
    if sw.by == FAILBACK_BY and priorities is not None and sw.to is not None:
        theirs, mine = priorities.get(sw.to, 0), priorities.get(me, 0)
        if theirs <= mine:
            return HolderPlan(
                HolderAction.FAIL,
                sw.to,
                f"fail-back to {sw.to} refused: {me}'s config gives {sw.to} priority {theirs}, not above its own "
                f"{mine}: make [[nodes]] priority the same in every node's file",
            )
    return HolderPlan(HolderAction.HAND_OVER, sw.to, f"switchover to {sw.to} requested by {sw.by or '?'}")


def needs_rows(control: Control) -> bool:
    """The holder must read the node rows to judge the control state (a due switchover's target)."""
    sw = control.switchover
    return not control.disabled and sw is not None and sw.due


def standby_poll(state: LeaseState, me: str, heartbeat: float) -> float:
    """How long a standby waits between reads: half a heartbeat, but FAST_POLL_S while the lease is reserved for
    it, or a switchover to it is due within a heartbeat (the holder may hand over at any moment: take it at once),
    and from a heartbeat before a scheduled one's time. Never fast while a control gate (disabled, maintenance,
    failover off) keeps the holder from handing over: such a request may stay pending for hours."""
    base = heartbeat / 2
    control = state.control
    if state.reserved_for == me:
        return FAST_POLL_S
    sw = control.switchover
    if sw is None or sw.to != me or control.disabled or control.maintenance or control.failover_off:
        return base
    if sw.due_in_ms <= heartbeat * 1000:
        return FAST_POLL_S
    return min(base, max(FAST_POLL_S, sw.due_in_ms / 1000 - heartbeat))


def left_app_must_stop(state: LeaseState, me: str) -> str | None:
    """Why a standby must stop an application it runs (one adopted from an agent stopped during maintenance, the
    only way a standby has one), or None: another node holds or the lease is handed over to another, or
    maintenance is off and this node does not hold. Either way another node may serve: never the app twice."""
    other = state.holder or state.reserved_for  # even expired: that node may resume it
    if other is not None and other != me:
        return f"{other} holds the lease"
    if not state.control.maintenance and not state.held_by(me):
        return "maintenance mode is off and this node does not hold the lease"
    return None


def takeovers_since_enable(events_newest_first: Sequence[tuple[str, str | None]], in_maintenance: bool) -> int:
    """The take-overs (FLAP_KINDS) among these events, as (kind, node) newest first, up to the last ENABLED: `fos
    enable` clears an anti-flap trip, so the take-overs before it must not trip it again. Not counted: anything
    during maintenance (between MAINTENANCE_ON and _OFF, or since the last ON while `in_maintenance`: restarts of
    the holder's agent for an upgrade), and a node taking back its own lease (a TAKEOVER whose node also made the
    acquisition before it, e.g. an agent restarted under another instance id)."""
    count, paused = 0, in_maintenance
    for at, (kind, node) in enumerate(events_newest_first):
        if kind == EventKind.ENABLED.value:
            break
        if kind in (EventKind.MAINTENANCE_ON.value, EventKind.MAINTENANCE_OFF.value):
            paused = kind == EventKind.MAINTENANCE_OFF.value  # newest first: before an OFF, maintenance was on
            continue
        if paused or kind not in FLAP_KINDS:
            continue
        if kind == EventKind.TAKEOVER.value:
            before = next((n for k, n in events_newest_first[at + 1 :] if k in ACQUISITIONS), None)
            if before is not None and before == node:
                continue
        count += 1
    return count


def is_flapping(takeovers: int, max_takeovers: int) -> bool:
    """More than max_takeovers take-overs in the window: automatic failover goes off."""
    return takeovers > max_takeovers


def reminder_due(maintenance_ms: int | None, remind_after: float, reminded: int) -> int | None:
    """The maintenance reminder to record now (its ordinal: one per `remind_after` seconds of maintenance), or
    None; `reminded` is the ordinal of the last one recorded (0: none). 0 turns reminders off."""
    if maintenance_ms is None or remind_after <= 0:
        return None
    due = int(maintenance_ms / 1000 // remind_after)
    return due if due > reminded else None


class FailbackStep(enum.Enum):
    WAIT = "wait"  # not (yet) the node that should hold
    REQUEST = "request"  # ask for a switchover to this node


def plan_failback(
    me: str,
    priorities: dict[str, int],
    holder: str | None,
    control: Control,
    rows: list[NodeRecord],
    ready_for: float,
    delay: float,
    heartbeat: float,
    call_timeout: float,
) -> tuple[FailbackStep, str]:
    """Fail-back (failback = "auto"): the node with the highest priority among the live standbys requests a
    switchover to itself once it has been a ready standby for `delay` seconds (`ready_for`) while a node of lower
    priority holds. Never while a switchover is pending, maintenance is on, the cluster is disabled or automatic
    failover is off."""
    if holder is None or holder == me:
        return FailbackStep.WAIT, "no other node holds the lease"
    if control.switchover is not None or control.maintenance or control.disabled or control.failover_off:
        return FailbackStep.WAIT, "the control state forbids a fail-back now"
    mine = priorities.get(me, 0)
    if mine <= priorities.get(holder, 0):
        return FailbackStep.WAIT, f"{holder} has at least our priority"
    for row in rows:
        if row.node in (me, holder) or row.role != "standby" or not node_alive(row, heartbeat, call_timeout):
            continue
        if priorities.get(row.node, 0) > mine:
            return FailbackStep.WAIT, f"{row.node} has a higher priority"
    if ready_for < delay:
        return FailbackStep.WAIT, f"ready for {ready_for:.1f}s of {delay:g}s"
    return FailbackStep.REQUEST, f"priority {mine} > {holder}'s {priorities.get(holder, 0)}"
