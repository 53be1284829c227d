"""Scheduled replication while active, and the age of a node's copy (reported on take-over).

The last good run per receiving node is the newest `mirror` event with result=ok and to=NODE (the events are
the database's record; no table of its own). ReplicationSchedule is self-contained: the agent starts it once
and cancels it at shutdown; it asks `holding_epoch()` (the agent's own view of its tenure) every `poll` seconds
and does nothing while that is None. It never touches the lease or the common IP, and a hung database call or
rsync only delays its own next run (use a store instance of its own, so its calls never queue before a renewal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from lease import Event, HistoryStore, StoreError

from .config import Config, ConfigError
from .replication import EVENT_MIRROR, EVENT_STALE, MirrorRefused, MirrorStore, mirror, parse_detail

log = structlog.get_logger("fos.replication")

EVENT_SCAN = 500  # how many recent events are searched for the last good copy


@dataclass(frozen=True)
class Freshness:
    """How old `node`'s copy is: the last good mirror run to it (None when there never was one)."""

    node: str
    at: datetime | None
    epoch: int | None
    age_s: float | None

    def describe(self) -> str:
        if self.at is None or self.age_s is None:
            return f"node {self.node} has no good copy on record (no successful fos mirror to it)"
        return (
            f"node {self.node}'s copy is {self.age_s:.0f}s old (last good mirror at {self.at.isoformat()[:19]}Z, "
            f"epoch {self.epoch})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "at": None if self.at is None else self.at.isoformat(),
            "epoch": self.epoch,
            "age_s": self.age_s,
        }


async def freshness(
    store: HistoryStore, cluster: str, node: str, now: datetime | None = None, timeout: float | None = None
) -> Freshness:
    """The age of `node`'s copy from the newest good `mirror` event to it among the last EVENT_SCAN events."""
    events = await store.list_events(cluster, limit=EVENT_SCAN, timeout=timeout)
    for e in events:
        fields = parse_detail(e.detail)
        if e.kind == EVENT_MIRROR and fields.get("to") == node and fields.get("result") == "ok":
            age = ((now or datetime.now(UTC)) - e.at).total_seconds()
            return Freshness(node, e.at, e.epoch, max(age, 0.0))
    return Freshness(node, None, None, None)


def deletions_paused(events: Sequence[Event], node: str) -> bool:
    """Scheduled runs to `node` copy without deletions while its newest mirror event (newest first in `events`)
    stopped at max_delete or ran paused (deletes=paused); a run by hand (by=operator) that did not stop at
    max_delete lifts the pause."""
    for e in events:
        fields = parse_detail(e.detail)
        if e.kind != EVENT_MIRROR or fields.get("to") != node or fields.get("result") in (None, "dry_run"):
            continue
        if fields["result"] == "max_delete":
            return True
        return fields.get("deletes") == "paused" and fields.get("by") != "operator"
    return False


def is_stale(f: Freshness, stale_after: float) -> bool:
    """Past stale_after (0: never stale), or never copied at all."""
    if stale_after <= 0:
        return False
    return f.age_s is None or f.age_s > stale_after


class ScheduleStore(MirrorStore, HistoryStore, Protocol):
    """A store with the lease read, events and nodes (lease.SqlLeaseStore)."""


class ReplicationSchedule:
    """While this node holds the lease: report its copy's age once per tenure (log, and a replication_stale
    event past stale_after), then run `fos mirror` every replication.interval (0: never)."""

    def __init__(
        self,
        cfg: Config,
        store: ScheduleStore,
        node: str,
        holding_epoch: Callable[[], int | None],
        poll: float = 1.0,
    ) -> None:
        self.cfg, self.store, self.node, self.holding_epoch, self.poll = cfg, store, node, holding_epoch, poll
        self.last_freshness: Freshness | None = None  # this node's copy at its last take-over (for /status)
        self.runs = 0  # mirror runs finished (good or not), for tests and metrics

    async def run(self) -> None:
        """Until cancelled. Never raises for a database, ssh or rsync failure (logged; retried next interval)."""
        rep = self.cfg.replication
        if not rep.enabled:
            return
        tenure: int | None = None
        next_run = 0.0
        while True:
            epoch = self.holding_epoch()
            if epoch is not None and epoch != tenure:
                tenure = epoch
                next_run = time.monotonic() + rep.interval
                await self._guarded(self.report_takeover(epoch))
            elif epoch is None:
                tenure = None
            if tenure is not None and rep.interval > 0 and time.monotonic() >= next_run:
                await self._guarded(self._run_while_holding(tenure))
                self.runs += 1
                next_run = time.monotonic() + rep.interval
            await asyncio.sleep(self.poll)

    async def _run_while_holding(self, tenure: int) -> None:
        """One mirror run, cancelled (its rsync killed) as soon as holding_epoch() is no longer `tenure`: a node
        that steps down or fences stops pushing within `poll` seconds, not at the end of the copy."""
        events = await self.store.list_events(self.cfg.cluster, limit=EVENT_SCAN, timeout=self.cfg.call_timeout)
        paused = frozenset(n.name for n in self.cfg.nodes if deletions_paused(events, n.name))
        run = mirror(self.cfg, self.store, self.node, expected_epoch=tenure, paused=paused)
        task = asyncio.create_task(self._guarded(run))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.poll)
                if not task.done() and self.holding_epoch() != tenure:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    log.warning("replication_cancelled", epoch=tenure, why="this node no longer holds the lease")
                    detail = "result=cancelled this node stopped holding the lease during the run"
                    await self._guarded(
                        self.store.record_event(self.cfg.cluster, self.node, EVENT_MIRROR, tenure, detail)
                    )
        finally:
            if not task.done():  # the schedule itself was cancelled (agent shutdown)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _guarded(self, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (StoreError, MirrorRefused, ConfigError, OSError) as exc:
            log.warning("replication_failed", error=" ".join(str(exc).splitlines()))

    async def report_takeover(self, epoch: int) -> Freshness:
        """Log how old this node's copy is; past stale_after also record a replication_stale event."""
        f = await freshness(self.store, self.cfg.cluster, self.node, timeout=self.cfg.call_timeout)
        self.last_freshness = f
        stale_after = self.cfg.replication.stale_after
        if is_stale(f, stale_after):
            log.warning("replication_stale", age_s=f.age_s, stale_after=stale_after, epoch=epoch)
            detail = f"{f.describe()}; stale_after is {stale_after:g}s"
            await self.store.record_event(self.cfg.cluster, self.node, EVENT_STALE, epoch, detail[:480])
        else:
            log.info("replication_copy_age", age_s=f.age_s, epoch=epoch)
        return f
