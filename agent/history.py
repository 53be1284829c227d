"""`fos history`: the event table read back as a timeline. Pure functions, table-tested (tests/test_agent_history.py).

Each take-over or switchover becomes a Transition with its phases, each stamped by an event the agents record:
the lease expired (TAKEOVER's detail says how long before) or was released / handed over (RELEASED, HANDOVER)
-> acquired (ACQUIRED, TAKEOVER, RESUMED) -> common IP bound (IP_BOUND) -> application healthy (PROMOTED); its
trigger (fault, schedule, fail-back, operator user@host, release, start) and its epoch.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lease import Event, EventKind
from lease.model import MAX_LOOKBACK_MS, detail_by

_ACQUIRES = (EventKind.ACQUIRED, EventKind.TAKEOVER, EventKind.RESUMED)
_EXPIRED = re.compile(r"^(?P<node>\S+) \(epoch (?P<epoch>\d+)\) expired (?P<ms>-?\d+) ms before the read")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_since(text: str, now: datetime | None = None) -> int:
    """--since: a duration (90s, 30m, 2h, 7d, 1h30m; a bare number is seconds) or an ISO 8601 time with a UTC
    offset in the past, at most ten years back; returns the look-back in milliseconds."""
    m = _DURATION.fullmatch(text.strip())
    if text.strip() and m and any(m.groups()):
        d, h, mins, s = m.groups()
        total = int(d or 0) * 86400 + int(h or 0) * 3600 + int(mins or 0) * 60 + float(s or 0)
        if total <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is no time at all: give e.g. 2h")
        return _within_ten_years(text, total * 1000)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration nor a time: give e.g. 2h, 30m, 7d or 2026-11-26T01:00:00+00:00"
        ) from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add one, like {text}+00:00")
    back = (now or datetime.now(UTC)) - at
    if back <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} is in the future: give a past time")
    return _within_ten_years(text, back.total_seconds() * 1000)


def _within_ten_years(text: str, ms: float) -> int:
    if ms > MAX_LOOKBACK_MS:
        days = MAX_LOOKBACK_MS // 86_400_000
        raise argparse.ArgumentTypeError(f"{text!r} is more than 10 years back: give at most {days}d")
    return int(ms)


@dataclass
class Transition:
    """One acquisition of the lease and how it came about."""

    epoch: int
    node: str | None
    trigger: str
    acquired_at: datetime
    from_node: str | None = None
    start: str | None = None  # "expired", "released" or "handed over"
    start_at: datetime | None = None
    ip_bound_at: datetime | None = None
    healthy_at: datetime | None = None
    kind: str = EventKind.ACQUIRED
    extra: dict[str, Any] = field(default_factory=dict)

    def durations(self) -> dict[str, float | None]:
        """Seconds of each phase (None when an end is unknown)."""

        def span(a: datetime | None, b: datetime | None) -> float | None:
            return None if a is None or b is None else round((b - a).total_seconds(), 3)

        return {
            "to_acquire": span(self.start_at, self.acquired_at),
            "to_bind": span(self.acquired_at, self.ip_bound_at),
            "to_healthy": span(self.ip_bound_at or self.acquired_at, self.healthy_at),
            "total": span(self.start_at or self.acquired_at, self.healthy_at),
        }

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "epoch": self.epoch,
            "node": self.node,
            "from_node": self.from_node,
            "kind": self.kind,
            "trigger": self.trigger,
            "phases": {
                self.start or "start": iso(self.start_at),
                "acquired": iso(self.acquired_at),
                "ip_bound": iso(self.ip_bound_at),
                "app_healthy": iso(self.healthy_at),
            },
            "durations_s": self.durations(),
        }


def _switchover_trigger(request: Event | None) -> str:
    if request is None:
        return "switchover"
    by = detail_by(request.detail) or "unknown"
    if by == "failback":
        return "fail-back"
    if "due in" in (request.detail or ""):
        return f"schedule (by {by})"
    return f"operator {by}"


_ENDS = (EventKind.STEPPED_DOWN, EventKind.FENCED, EventKind.DEMOTED)


def timeline(events: Sequence[Event]) -> list[Transition]:
    """The transitions in `events` (oldest first). Two passes: the event saying why a holder let go (stepped
    down, fenced, demoted) is recorded after its release, and may come after the next node's acquisition."""
    released: dict[int, Event] = {}  # epoch given up -> its RELEASED / HANDOVER event
    ended: dict[int, Event] = {}  # epoch -> why its holder let go
    requests: dict[int, Event] = {}  # handed-over epoch -> the switchover request before the HANDOVER
    request: Event | None = None
    for e in events:
        if e.kind == EventKind.SWITCHOVER_REQUESTED:
            request = e
        elif e.epoch is None:
            continue
        elif e.kind in (EventKind.RELEASED, EventKind.HANDOVER):
            released[e.epoch] = e
            if e.kind == EventKind.HANDOVER and request is not None:
                requests[e.epoch], request = request, None
        elif e.kind in _ENDS:
            ended.setdefault(e.epoch, e)
    out: list[Transition] = []
    by_epoch: dict[int, Transition] = {}
    for e in events:
        if e.epoch is None:
            continue
        if e.kind in _ACQUIRES:
            before = e.epoch - 1
            t = _transition(e, released.get(before), ended.get(before), requests.get(before))
            out.append(t)
            by_epoch[e.epoch] = t
        elif e.kind == EventKind.IP_BOUND and e.epoch in by_epoch:
            by_epoch[e.epoch].ip_bound_at = by_epoch[e.epoch].ip_bound_at or e.at
        elif e.kind == EventKind.PROMOTED and e.epoch in by_epoch:
            by_epoch[e.epoch].healthy_at = by_epoch[e.epoch].healthy_at or e.at
    return out


def _transition(e: Event, release: Event | None, end: Event | None, request: Event | None) -> Transition:
    assert e.epoch is not None
    t = Transition(e.epoch, e.node, "start", e.at, kind=e.kind)
    if e.kind == EventKind.RESUMED:
        t.trigger, t.from_node = "restart (the agent resumed its own lease)", e.node
    elif e.kind == EventKind.TAKEOVER:
        m = _EXPIRED.match(e.detail or "")
        t.trigger, t.start = "fault (the holder's lease expired)", "expired"
        if m:
            t.from_node = m.group("node")
            t.start_at = e.at - timedelta(milliseconds=max(0, int(m.group("ms"))))
    elif release is not None:
        t.from_node, t.start_at, t.start = release.node, release.at, "released"
        if release.kind == EventKind.HANDOVER:
            t.start, t.trigger = "handed over", _switchover_trigger(request)
        elif end is not None and end.kind != EventKind.DEMOTED:
            what = "fenced" if end.kind == EventKind.FENCED else "stepped down"
            t.trigger = f"fault ({what}: {end.detail})" if end.detail else f"fault ({what})"
        else:
            why = (end.detail if end is not None else None) or release.detail or "the holder gave the lease up"
            t.trigger = f"release ({why})"
    return t


def _clock(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f} s"


def format_timeline(cluster: str, events: Sequence[Event], transitions: Sequence[Transition]) -> str:
    """The text `fos history` prints: every event, then each transition with its phases (times in UTC)."""
    if not events:
        return f"cluster {cluster}: no events in this period"
    lines = [f"cluster {cluster}: {len(events)} events, times in UTC"]
    for e in events:
        epoch = "-" if e.epoch is None else str(e.epoch)
        stamp = e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        lines.append(f"  {stamp}  {e.node or '-':<12} {e.kind:<21} epoch {epoch:<5} {e.detail or ''}".rstrip())
    if transitions:
        lines.append("take-overs and switchovers:")
    for t in transitions:
        d = t.durations()
        who = f"{t.from_node} -> {t.node}" if t.from_node else f"{t.node}"
        lines.append(f"  epoch {t.epoch}: {who}, trigger: {t.trigger}")
        phases = [f"acquired {_clock(t.acquired_at)}"]
        if t.start_at is not None:
            phases.insert(0, f"{t.start} {_clock(t.start_at)}")
            phases[1] += f" (+{_secs(d['to_acquire'])})"
        phases.append(f"IP bound {_clock(t.ip_bound_at)}" + (f" (+{_secs(d['to_bind'])})" if t.ip_bound_at else ""))
        phases.append(f"app healthy {_clock(t.healthy_at)}" + (f" (+{_secs(d['to_healthy'])})" if t.healthy_at else ""))
        total = f"; total {_secs(d['total'])}" if d["total"] is not None else ""
        lines.append("    " + " -> ".join(phases) + total)
    return "\n".join(lines)
