"""Operations commands: `fos switchover`, `fos maintenance on|off`, `fos disable`, `fos enable`, `fos history`.

The database is the only control plane: each command checks what it can from the lease row and the node rows,
writes its intent with one atomic statement (lease/control.py), and the agents act on it. Exit codes: 0 done,
1 not done (the one line says why; nothing was changed), 2 bad usage (the one line names the argument and the
fix). Registered into the `fos` parser by agent/cli.py (register()).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from lease import ControlStore, EventKind, HistoryStore, LeaseState, LeaseStore, NodeRecord
from lease.model import SEES_MAINTENANCE, sees_states

from .config import Config, load
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .history import format_timeline, parse_since, timeline
from .stores import command_store
from .wake import HintKind
from .wake_send import wake_peers

DOWN_AFTER_HEARTBEATS = 3  # a node row older than this many heartbeats is not alive (status shows it DOWN)
HOLD_OFF_ROLE = "hold_off"  # the node row's role while a node waits after stepping down for an app failure
MAX_SCHEDULE = timedelta(days=7)  # --at at most this far ahead (the due time is stored as 32-bit milliseconds)
POLL_S = 0.05  # --wait polls the database this often


class Store(LeaseStore, HistoryStore, ControlStore, Protocol):
    """What the commands need of a store (SqlLeaseStore; MemoryLeaseStore in unit tests)."""

    async def close(self) -> None: ...


def operator() -> str:
    """Who runs the command: user@host, the user who ran sudo if there is one."""
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except OSError:  # no login name in the environment and no passwd entry (a bare container)
            user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def node_is_down(role: str, last_seen_age_s: float | None, heartbeat: float) -> bool:
    """A node whose agent stopped, or whose row was not refreshed for DOWN_AFTER_HEARTBEATS heartbeats (its
    agent was killed or cut off): its last role and app health are stale."""
    if role == "stopped" or last_seen_age_s is None:
        return True
    return last_seen_age_s > DOWN_AFTER_HEARTBEATS * heartbeat


def _ago(ms: int | None) -> str:
    return "?" if ms is None else f"{ms / 1000:.0f} s ago"


def control_refusal(state: LeaseState) -> str | None:
    """Why no switchover can be requested in this state (cluster-wide reasons), or None."""
    c = state.control
    if c.disabled:
        return f"the cluster is disabled (by {c.disabled_by}, {_ago(c.disabled_ms)}): run `fos enable` first"
    if c.maintenance:
        return (
            f"maintenance mode is on (by {c.maintenance_by}, {_ago(c.maintenance_ms)}): run `fos maintenance off` first"
        )
    if c.failover_off:
        return f"automatic failover is off ({c.failover_off_reason}): run `fos enable` first"
    if c.switchover is not None:
        s = c.switchover
        when = "due now" if s.due else f"due in {s.due_in_ms / 1000:.0f} s"
        return (
            f"another switchover is pending (to {s.to}, {when}, by {s.by}): wait for it, or `fos switchover --cancel`"
        )
    if not state.held:
        return "no node holds the lease, so there is nothing to switch over: the agents elect a holder themselves"
    return None


def target_refusal(target: str, state: LeaseState, nodes: Sequence[NodeRecord], heartbeat: float) -> str | None:
    """Why `target` cannot take over now, or None. The target is a node of the config (checked before)."""
    if state.held_by(target):
        return f"{target} already holds the lease (epoch {state.epoch}): nothing to switch over"
    row = next((n for n in nodes if n.node == target), None)
    if row is None:
        return f"{target} has never reported to the database: start its agent (`systemctl start fos`) first"
    if node_is_down(row.role, row.last_seen_age_s, heartbeat):
        seen = "its agent stopped" if row.role == "stopped" else f"last seen {row.last_seen_age_s or 0:.0f} s ago"
        return f"{target} was not seen alive recently ({seen}): start its agent, or choose another node"
    if row.role == HOLD_OFF_ROLE:
        return f"{target} is in hold-off after stepping down for an application failure: fix it, or wait"
    if row.app_healthy is False:
        return f"{target} reports its application unhealthy: fix it first (see `fos status`)"
    return None


def older_agent_refusal(nodes: Sequence[NodeRecord], heartbeat: float, what: str) -> str | None:
    """Why a command cannot be given while a live agent of the previous release runs, or None. Such an agent
    reports no `sees` (NULL, schema 2) and ignores every schema-3 gate: it would take over during maintenance,
    acquire a disabled cluster, or a handover's reservation. `what` names the command's effect."""
    old = [n.node for n in nodes if n.sees is None and not node_is_down(n.role, n.last_seen_age_s, heartbeat)]
    if not old:
        return None
    names = ", ".join(old)
    runs = "runs an agent" if len(old) == 1 else "run agents"
    return (
        f"{names} {runs} older than schema 3 (its node row reports no `sees`), which ignores {what}: "
        f"upgrade the agent on {names} first (it runs on the upgraded database), then retry"
    )


def best_target(cfg: Config, state: LeaseState, nodes: Sequence[NodeRecord]) -> str | None:
    """The other node to switch over to without --to: alive and healthy, highest priority, then most recently
    seen, then by name."""
    hb = cfg.lease.heartbeat
    rows = {n.node: n for n in nodes}
    fit = [n for n in cfg.nodes if n.name != state.holder and target_refusal(n.name, state, nodes, hb) is None]
    fit.sort(key=lambda n: (-n.priority, rows[n.name].last_seen_age_s or 0.0, n.name))
    return fit[0].name if fit else None


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str


def _usage(command: str, message: str) -> int:
    print(f"fos {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _not_done(command: str, message: str) -> int:
    print(f"fos {command}: not done: {message}", file=sys.stderr)
    return EXIT_FAILED


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """--at: an ISO 8601 time with a UTC offset, in the future, at most MAX_SCHEDULE ahead."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time: write it like 2026-11-26T03:00:00+01:00"
        ) from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add one, like {text}+00:00")
    now = now or datetime.now(UTC)
    if at <= now:
        raise argparse.ArgumentTypeError(f"{text!r} is in the past: give a future time, or leave --at out for now")
    if at - now > MAX_SCHEDULE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 7 days ahead: schedule it later")
    return at


# ---- fos switchover ------------------------------------------------------------------------------------------


async def _switchover(cfg: Config, store: Store, args: argparse.Namespace, by: str) -> int:
    if args.cancel:
        if await store.cancel_switchover(cfg.cluster, by):
            await wake_peers(cfg, HintKind.CONTROL)
            print(f"pending switchover cancelled by {by}")
            return EXIT_OK
        return _not_done("switchover", "no switchover is pending: nothing to cancel")
    state = await store.read(cfg.cluster)
    nodes = await store.list_nodes(cfg.cluster)
    refused = control_refusal(state) or older_agent_refusal(nodes, cfg.lease.heartbeat, "switchover requests")
    if refused:
        return _not_done("switchover", refused)
    target = args.to or best_target(cfg, state, nodes)
    if target is None:
        return _not_done(
            "switchover", f"no other node is alive and healthy to take over from {state.holder}: see `fos status`"
        )
    refused = target_refusal(target, state, nodes, cfg.lease.heartbeat)
    if refused:
        return _not_done("switchover", refused)
    due = args.at - datetime.now(UTC) if args.at is not None else timedelta(0)
    due_ms = max(0, int(due.total_seconds() * 1000))
    requested = time.monotonic()
    if not await store.request_switchover(cfg.cluster, target, due_ms, by):
        return _not_done("switchover", control_refusal(await store.read(cfg.cluster)) or "the request was refused")
    await wake_peers(cfg, HintKind.CONTROL)  # the holder reads its control state now, not at its next poll
    when = f"at {args.at.isoformat()}" if args.at is not None else "now"
    print(f"switchover from {state.holder} to {target} requested {when} by {by} (epoch {state.epoch})")
    if not args.wait:
        return EXIT_OK
    bound = due_ms / 1000 + cfg.lease.ttl + DOWN_AFTER_HEARTBEATS * cfg.lease.heartbeat + cfg.app.health.start_grace
    outcome = await wait_for_switchover(store, cfg.cluster, target, requested, bound)
    print(outcome.message, file=sys.stdout if outcome.code == EXIT_OK else sys.stderr)
    return outcome.code


async def wait_for_switchover(store: Store, cluster: str, target: str, since: float, bound_s: float) -> Outcome:
    """Poll until `target` holds the lease and its node row says active (done), or the request is gone while
    another node holds (failed), or `bound_s` passed since `since` (monotonic)."""
    while True:
        state = await store.read(cluster)
        elapsed = time.monotonic() - since
        if state.held_by(target):
            row = next((n for n in await store.list_nodes(cluster) if n.node == target), None)
            if row is not None and row.role == "active":
                return Outcome(EXIT_OK, f"{target} serves (epoch {state.epoch}) {elapsed:.2f} s after the request")
        elif state.control.switchover is None and state.held:
            why = await _switchover_end(store, cluster)
            return Outcome(EXIT_FAILED, f"fos switchover: failed: {why}; {state.holder} holds (epoch {state.epoch})")
        if elapsed > bound_s:
            now = f"{state.holder} holds" if state.held else "nobody holds"
            return Outcome(
                EXIT_FAILED,
                f"fos switchover: not done within {bound_s:.0f} s ({now}, epoch {state.epoch}): see `fos history`",
            )
        await asyncio.sleep(POLL_S)


async def _switchover_end(store: Store, cluster: str) -> str:
    ends = (EventKind.SWITCHOVER_FAILED, EventKind.SWITCHOVER_STALE, EventKind.SWITCHOVER_CANCELLED)
    for e in await store.list_events(cluster, limit=20):
        if e.kind in ends:
            return f"{e.kind.replace('_', ' ')} ({e.detail})"
        if e.kind == EventKind.SWITCHOVER_REQUESTED:
            break
    return "the target did not take over"


# ---- fos maintenance / disable / enable ----------------------------------------------------------------------


def left_running_refusal(state: LeaseState, nodes: Sequence[NodeRecord], heartbeat: float) -> str | None:
    """Why maintenance mode must not be turned off yet: the holder's agent was stopped under maintenance, so its
    application still runs there, supervised by nobody; off now, another node would take over and start a second
    copy. Its row says "stopped", or (a stop whose last row write failed) still sees maintenance but was not
    refreshed for DOWN_AFTER_HEARTBEATS heartbeats. None when no such agent is found."""
    holder = state.holder or state.reserved_for
    row = next((r for r in nodes if r.node == holder), None)
    if row is None or SEES_MAINTENANCE not in (sees_states(row.sees) or frozenset()):
        return None
    fix = (
        f"start fos on {holder} first (it adopts the application), or pass --force if that application is "
        "known to be stopped"
    )
    if row.role == "stopped":
        return (
            f"the agent on {holder} (the holder) was stopped during maintenance and left its application running: {fix}"
        )
    if node_is_down(row.role, row.last_seen_age_s, heartbeat):
        seen = "ever" if row.last_seen_age_s is None else f"for {row.last_seen_age_s:.0f} s"
        return (
            f"the agent on {holder} (the holder) was not seen {seen}, seeing maintenance mode: it may have stopped "
            f"and left its application running: {fix}"
        )
    return None


async def _maintenance(cfg: Config, store: Store, on: bool, wait: bool, by: str, force: bool = False) -> int:
    started = time.monotonic()
    if on:
        old = older_agent_refusal(await store.list_nodes(cfg.cluster), cfg.lease.heartbeat, "maintenance mode")
        if old:
            return _not_done("maintenance", old)
    elif not force:
        state, nodes = await store.read(cfg.cluster), await store.list_nodes(cfg.cluster)
        left = left_running_refusal(state, nodes, cfg.lease.heartbeat)
        if left:
            return _not_done("maintenance", left)
    if await store.set_maintenance(cfg.cluster, on, by):
        await wake_peers(cfg, HintKind.CONTROL)
        if on:
            print(f"maintenance mode on (by {by}): nobody fails over, fos starts and stops no application")
        else:
            print(f"maintenance mode off (by {by}): the agents reconcile with the real state and act again")
    else:
        state = await store.read(cfg.cluster)
        c = state.control
        if on and not c.maintenance:
            return _not_done("maintenance", _maintenance_refusal(state))
        print(
            f"maintenance mode was already {'on' if on else 'off'}"
            + (f" (by {c.maintenance_by}, {_ago(c.maintenance_ms)})" if on and c.maintenance else "")
        )
    if not wait:
        return EXIT_OK
    bound = (DOWN_AFTER_HEARTBEATS + 1) * cfg.lease.heartbeat + cfg.call_timeout
    outcome = await wait_for_acknowledgement(store, cfg, on, started, bound)
    print(outcome.message, file=sys.stdout if outcome.code == EXIT_OK else sys.stderr)
    return outcome.code


def _maintenance_refusal(state: LeaseState) -> str:
    """Why maintenance mode could not be turned on (the statement refuses it during a switchover and on a lease
    nobody holds)."""
    pending = state.control.switchover
    if pending is not None:
        return f"a switchover to {pending.to} is pending: wait for it, or `fos switchover --cancel`"
    if state.reserved_for is not None:
        return f"a switchover is under way (the lease is handed over to {state.reserved_for}): try again in a moment"
    if not state.held:
        return (
            "no node holds the lease, and maintenance mode would keep every node from taking it: wait until one "
            "serves (`fos status`), then retry"
        )
    return "the database refused it: see `fos status`"


def acknowledged(row: NodeRecord, on: bool) -> bool:
    """Does this node row say its agent acts on maintenance mode being `on`?"""
    states = sees_states(row.sees)
    if states is None:
        return False  # an agent that does not report what it sees (older than schema 3) never acknowledges
    return (SEES_MAINTENANCE in states) == on


async def wait_for_acknowledgement(store: Store, cfg: Config, on: bool, since: float, bound_s: float) -> Outcome:
    """Poll until every live agent's node row acknowledges maintenance `on`/off, or `bound_s` passed."""
    hb = cfg.lease.heartbeat
    while True:
        rows = await store.list_nodes(cfg.cluster)
        live = [r for r in rows if not node_is_down(r.role, r.last_seen_age_s, hb)]
        waiting = [r.node for r in live if not acknowledged(r, on)]
        elapsed = time.monotonic() - since
        if not waiting and live:
            down = sorted({n.name for n in cfg.nodes} - {r.node for r in live})
            note = f"; not running: {', '.join(down)} (they see it when they start)" if down else ""
            names = ", ".join(r.node for r in live)
            return Outcome(EXIT_OK, f"acknowledged by {names} after {elapsed:.2f} s{note}")
        if elapsed > bound_s:
            why = f"no acknowledgement from {', '.join(waiting)}" if waiting else "no agent is running"
            return Outcome(EXIT_FAILED, f"fos maintenance: not acknowledged within {bound_s:.0f} s: {why}")
        await asyncio.sleep(POLL_S)


async def _disable(cfg: Config, store: Store, by: str) -> int:
    old = older_agent_refusal(await store.list_nodes(cfg.cluster), cfg.lease.heartbeat, "disabling")
    if old:
        return _not_done("disable", old)
    state = await store.read(cfg.cluster)
    if not await store.set_disabled(cfg.cluster, True, by):
        c = state.control
        print(f"the cluster was already disabled (by {c.disabled_by}, {_ago(c.disabled_ms)})")
        return EXIT_OK
    await wake_peers(cfg, HintKind.CONTROL)
    holder = f"{state.holder} releases the common IP, the application and the lease; " if state.held else ""
    print(f"cluster {cfg.cluster} disabled by {by}: {holder}no node acquires until `fos enable`")
    return EXIT_OK


async def _enable(cfg: Config, store: Store, by: str) -> int:
    c = (await store.read(cfg.cluster)).control
    if not await store.set_disabled(cfg.cluster, False, by):
        print(f"cluster {cfg.cluster} was already enabled, with automatic failover on")
        return EXIT_OK
    await wake_peers(cfg, HintKind.CONTROL)
    what = [
        w
        for w, on in (("the cluster", c.disabled), (f"automatic failover ({c.failover_off_reason})", c.failover_off))
        if on
    ]
    print(f"enabled by {by}: {' and '.join(what) or 'the cluster'}; the agents compete for the lease again")
    return EXIT_OK


# ---- fos history -----------------------------------------------------------------------------------------------


async def _history(cfg: Config, store: Store, since_ms: int | None, limit: int, as_json: bool) -> int:
    events = await store.list_events(cfg.cluster, limit=limit, since_ms=since_ms)
    events.reverse()  # oldest first
    transitions = timeline(events)
    if as_json:
        doc = {
            "cluster": cfg.cluster,
            "events": [
                {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "node": e.node,
                    "kind": e.kind,
                    "epoch": e.epoch,
                    "detail": e.detail,
                }
                for e in events
            ],
            "transitions": [t.as_dict() for t in transitions],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_timeline(cfg.cluster, events, transitions))
    return EXIT_OK


# ---- wiring ------------------------------------------------------------------------------------------------------


def _run(cfg: Config, body: Callable[[Store], Awaitable[int]]) -> int:
    async def run() -> int:
        store = command_store(cfg)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_switchover(args: argparse.Namespace) -> int:
    if args.cancel and (args.to or args.at or args.wait):
        return _usage("switchover", "--cancel takes no --to, --at or --wait: run `fos switchover --cancel` alone")
    cfg = load(args.config)
    if args.to is not None and args.to not in {n.name for n in cfg.nodes}:
        return _usage(
            "switchover", f"--to {args.to!r} is not a node of cluster {cfg.cluster}: use one of {cfg.node_names()}"
        )
    by = operator()
    return _run(cfg, lambda s: _switchover(cfg, s, args, by))


def cmd_maintenance(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    return _run(cfg, lambda s: _maintenance(cfg, s, args.state == "on", args.wait, operator(), args.force))


def cmd_disable(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    return _run(cfg, lambda s: _disable(cfg, s, operator()))


def cmd_enable(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    return _run(cfg, lambda s: _enable(cfg, s, operator()))


def cmd_history(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    return _run(cfg, lambda s: _history(cfg, s, args.since, args.limit, args.json))


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of events from 1 to 100000: give e.g. 500")
    return int(text)


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Add switchover, maintenance, disable, enable and history to the `fos` subcommands."""
    p = with_config(sub.add_parser("switchover", help="move the active role to another node (exit 0 done, 1 not)"))
    p.add_argument("--to", metavar="NODE", help="the node to take over (default: the best other node)")
    p.add_argument("--at", metavar="TIME", type=parse_at, help="when: ISO 8601 with a UTC offset (default: now)")
    p.add_argument("--wait", action="store_true", help="return when the target serves, or the switchover failed")
    p.add_argument("--cancel", action="store_true", help="remove the pending switchover")
    p.set_defaults(func=cmd_switchover)
    p = with_config(sub.add_parser("maintenance", help="pause automatic actions cluster-wide (for upgrades)"))
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--wait", action="store_true", help="return when every running agent has acknowledged")
    p.add_argument(
        "--force",
        action="store_true",
        help="off even though the holder's agent is stopped (or not seen for 3 heartbeats) with its application "
        "left running",
    )
    p.set_defaults(func=cmd_maintenance)
    p = with_config(sub.add_parser("disable", help="the holder lets go cleanly and no node acquires"))
    p.set_defaults(func=cmd_disable)
    p = with_config(sub.add_parser("enable", help="let the agents compete again (also clears an anti-flap stop)"))
    p.set_defaults(func=cmd_enable)
    p = with_config(sub.add_parser("history", help="the event history as a timeline with take-over phases"))
    p.add_argument("--since", metavar="DURATION|TIME", type=parse_since, help="e.g. 2h, 30m, 7d, or ISO 8601 time")
    p.add_argument("--limit", type=_limit, default=1000, help="at most this many events (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_history)
