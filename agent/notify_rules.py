"""Which events become notifications, and what they say. Pure: no I/O, table-tested (tests/test_agent_notify_rules.py).

The notifier (agent/notifier.py) feeds every new event of the cluster, oldest first, into an EventFolder, which
returns the Notices to send. A take-over is held until the new holder's PROMOTED event of the same epoch (so the
message can say how long the service was down), or until `promotion_wait` seconds have passed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lease import Event, NodeRecord

SEVERITY = {
    "master_node_down": "critical",
    "fenced": "critical",
    "flapping": "critical",
    "database_unreachable": "critical",
    "stepped_down": "warning",
    "standby_missing": "warning",
    "switchover_failed": "warning",
    "maintenance_reminder": "warning",
    "disabled": "warning",
    "test": "info",
}
# Event kinds (lease.model.EventKind values, and the ones the notifier records) -> notification kind.
EVENT_TO_NOTICE = {
    "takeover": "master_node_down",
    "fenced": "fenced",
    "stepped_down": "stepped_down",
    "standby_missing": "standby_missing",
    "standby_back": "standby_back",
    "database_unreachable": "database_unreachable",
    "database_back": "database_back",
    "switchover_done": "switchover_done",
    "switchover_failed": "switchover_failed",
    "maintenance_on": "maintenance_on",
    "maintenance_off": "maintenance_off",
    "maintenance_reminder": "maintenance_reminder",
    "disabled": "disabled",
    "enabled": "enabled",
    "flapping": "flapping",
}
MAX_DETAIL = 1000  # keeps a notice's JSON well inside the outbox's body column (lease/outbox.py MAX_BODY)
# lease/store.py's TAKEOVER detail: "<previous> (epoch <n>) expired <ms> ms before the read"
_TAKEOVER = re.compile(r"^(?P<prev>\S+) \(epoch (?P<epoch>\d+)\) expired (?P<ms>-?\d+) ms before the read")


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Notice:
    """One message, the same on every channel. `key` is unique within the cluster: the outbox's dedup key."""

    kind: str
    key: str
    cluster: str
    node: str | None
    epoch: int | None
    at: str  # ISO 8601 UTC, the event's time on the database clock
    summary: str  # one line
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "info")

    @property
    def subject(self) -> str:
        """One line: an event detail with line breaks must not break (or inject into) the mail's headers."""
        return " ".join(f"[fos {self.cluster}] {self.severity.upper()} {self.kind}: {self.summary}".split())[:200]

    def text(self, sent_by: str) -> str:
        """The mail body (plain text)."""
        lines = [f"fos cluster {self.cluster}: {self.summary}", ""]
        lines.append(f"{'event':<20} {self.kind} ({self.severity})")
        lines.append(f"{'at (UTC)':<20} {self.at}")
        if self.node:
            lines.append(f"{'node':<20} {self.node}")
        if self.epoch is not None:
            lines.append(f"{'epoch':<20} {self.epoch}")
        for k, v in self.facts.items():
            lines.append(f"{k.replace('_', ' '):<20} {v}")
        lines += ["", f"Sent once for the cluster by fos on {sent_by}. More: fos status --config FILE"]
        return "\n".join(lines) + "\n"

    def webhook_body(self, sent_by: str) -> dict[str, Any]:
        """The webhook's JSON: generic fields, plus `text`, which Slack- and Teams-style incoming webhooks show."""
        return {
            "source": "fos",
            "cluster": self.cluster,
            "kind": self.kind,
            "severity": self.severity,
            "at": self.at,
            "node": self.node,
            "epoch": self.epoch,
            "summary": self.summary,
            "facts": self.facts,
            "sent_by": sent_by,
            "key": self.key,
            "text": f"[fos {self.cluster}] {self.severity.upper()} {self.kind}: {self.summary}",
        }

    def to_json(self) -> str:
        return json.dumps(
            {k: getattr(self, k) for k in ("kind", "key", "cluster", "node", "epoch", "at", "summary", "facts")},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Notice:
        d = json.loads(text)
        return cls(d["kind"], d["key"], d["cluster"], d["node"], d["epoch"], d["at"], d["summary"], d["facts"])


def dedup_key(kind: str, event: Event, min_interval: float) -> str:
    """One message per event; with min_interval, one per kind and clock-aligned window of that many seconds."""
    if min_interval > 0:
        return f"{kind}.w{int(event.at.timestamp() // min_interval)}"
    return f"{kind}.{event.id}"


def master_node_down(cluster: str, takeover: Event, promoted: Event | None, ttl_s: float, key: str) -> Notice:
    """The take-over by `takeover.node`: who held before, the epoch, and how long the service was down at most:
    from the previous holder's last renewal (its expiry minus the ttl) to the new holder serving (PROMOTED)."""
    m = _TAKEOVER.match(takeover.detail or "")
    facts: dict[str, Any] = {}
    previous = m.group("prev") if m else None
    if m:
        expired_at = takeover.at.timestamp() - int(m.group("ms")) / 1000.0
        facts["previous_holder"] = previous
        facts["previous_epoch"] = int(m.group("epoch"))
        facts["lease_expired_at"] = _iso(datetime.fromtimestamp(expired_at, takeover.at.tzinfo))
        if promoted is not None:
            served = promoted.at.timestamp()
            facts["served_again_at"] = _iso(promoted.at)
            facts["down_at_most_s"] = round(served - (expired_at - ttl_s), 1)
            facts["expiry_to_serving_s"] = round(served - expired_at, 1)
    if promoted is None:
        facts["serving"] = "not confirmed (no PROMOTED event yet)"
    down = facts.get("down_at_most_s")
    summary = f"{takeover.node} took over from {previous or 'the previous holder'} (epoch {takeover.epoch})"
    if down is not None:
        summary += f"; the service was down for at most {down:g}s"
    facts["detail"] = (takeover.detail or "")[:MAX_DETAIL]
    return Notice("master_node_down", key, cluster, takeover.node, takeover.epoch, _iso(takeover.at), summary, facts)


def simple_notice(cluster: str, kind: str, event: Event, key: str) -> Notice:
    detail = (event.detail or "").strip()[:MAX_DETAIL]
    who = event.node or "the cluster"
    summaries = {
        "fenced": f"{who} dropped the common IP and fenced itself",
        "stepped_down": f"{who} stepped down",
        "standby_missing": f"no standby seen alive: there is no failover protection now (holder {who})",
        "standby_back": f"a standby is back: failover protection restored (holder {who})",
        "database_unreachable": f"{who} cannot reach the database",
        "database_back": f"{who} reaches the database again",
    }
    summary = summaries.get(kind, f"{kind.replace('_', ' ')} ({who})")
    if detail:
        summary = f"{summary}: {detail}"
    return Notice(kind, key, cluster, event.node, event.epoch, _iso(event.at), summary[:300], {"detail": detail})


class EventFolder:
    """Turns the cluster's events, fed oldest first, into Notices. Holds take-overs for their PROMOTED event."""

    def __init__(
        self, cluster: str, ttl_s: float, kinds: tuple[str, ...], min_interval: float, promotion_wait: float
    ) -> None:
        self.cluster, self.ttl_s, self.kinds = cluster, ttl_s, frozenset(kinds)
        self.min_interval, self.promotion_wait = min_interval, promotion_wait
        self._takeovers: dict[int, tuple[Event, float]] = {}  # epoch -> (TAKEOVER event, local time seen)

    def feed(self, event: Event, now: float) -> list[Notice]:
        """The notices this event completes (possibly none). `now`: local monotonic time, for promotion_wait."""
        kind = EVENT_TO_NOTICE.get(event.kind)
        out: list[Notice] = []
        if event.kind in ("promoted", "fenced", "stepped_down") and event.epoch in self._takeovers:
            takeover, _ = self._takeovers.pop(event.epoch)
            promoted = event if event.kind == "promoted" and event.node == takeover.node else None
            out.append(self._takeover(takeover, promoted))
        if kind is None or kind not in self.kinds:
            return out
        if kind == "master_node_down":
            if event.epoch is not None:
                self._takeovers[event.epoch] = (event, now)
            else:
                out.append(self._takeover(event, None))
            return out
        out.append(simple_notice(self.cluster, kind, event, dedup_key(kind, event, self.min_interval)))
        return out

    def due(self, now: float) -> list[Notice]:
        """Take-overs whose PROMOTED event did not come within promotion_wait: sent without it."""
        late = [e for e, (ev, seen) in self._takeovers.items() if now - seen >= self.promotion_wait]
        return [self._takeover(self._takeovers.pop(e)[0], None) for e in late]

    def _takeover(self, takeover: Event, promoted: Event | None) -> Notice:
        key = dedup_key("master_node_down", takeover, self.min_interval)
        return master_node_down(self.cluster, takeover, promoted, self.ttl_s, key)


def standby_missing(nodes: list[NodeRecord], me: str, after_s: float, holding_for_s: float) -> bool:
    """True when no node but `me` wrote its row within `after_s` seconds (a stopped agent's last row counts from
    when it stopped): nobody could take over if this holder died. Never before this node has held the lease for
    `after_s` itself (a standby that starts a moment after the first holder has not written its row yet)."""
    alive = any(n.node != me and n.last_seen_age_s is not None and n.last_seen_age_s <= after_s for n in nodes)
    return holding_for_s >= after_s and not alive


def missing_detail(nodes: list[NodeRecord], me: str) -> str:
    others = [f"{n.node} last seen {n.last_seen_age_s:.0f}s ago" for n in nodes if n.node != me and n.last_seen_age_s]
    return "; ".join(others) or "no other node has ever reported"
