"""The notifier: each agent tails the cluster's event table and sends the notifiable events by mail and webhooks,
exactly once for the cluster although every node sees them (the outbox, lease/outbox.py).

It runs beside the agent on a store (connections) of its own and is never awaited by the lease loop: a slow or
dead mail server, webhook or database only delays messages. Its parts, each a task:
- tail: every poll (the heartbeat, at most 2 s) the events after the last one seen, folded into Notices
  (agent/notify_rules.py); each is offered to the outbox, and the node whose INSERT wins queues it. The holder
  also watches the node rows and records standby_missing / standby_back; a node that cannot read the database
  for database_unreachable_after sends database_unreachable itself (the outbox is out of reach) and records
  database_back when it can again.
- workers: deliver queued messages (several at once) on every channel at once, each retried with backoff
  (tenacity) for up to takeover_after, refreshing the claim meanwhile; record each channel that accepted it,
  then mark the message sent. A channel still failing then is left to the scan (below) for a later round.
- scan: takes over unsent messages whose claim nobody refreshed for takeover_after (their sender died, or gave
  up for a round), for the channels still missing.
On stop (SIGTERM) every task is cancelled within a second; what was not delivered stays in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from lease import StoreError
from lease.outbox_store import SqlOutboxStore

from .config import Config
from .notify_rules import EventFolder, Notice, missing_detail, standby_missing
from .notify_send import Channel, DeliveryFailed, channels

QUEUE_SIZE = 100  # messages waiting for the worker; beyond it they wait in the outbox for the scan
EVENTS_PER_READ = 200
# Ids are handed out at INSERT and become visible at COMMIT: an event with a lower id can appear after a higher
# one was read. Each read reaches this many ids back, and ids already seen are skipped.
ID_OVERLAP = 20
SEEN_IDS = 1000
UNOFFERED_MAX = 1000  # notices whose INSERT failed (database down), offered again on the next pass
MAX_AGE_MS = 24 * 3600 * 1000  # an unsent message older than a day is not taken over any more
KEEP_SENT_MS = 7 * 24 * 3600 * 1000  # sent messages are deleted after a week
STOP_WITHIN_S = 0.9
WORKERS = 4  # messages delivered at once: one slow receiver does not hold up the others

log = structlog.get_logger("fos.notify")


@dataclass
class _Job:
    notice: Notice
    outbox: bool  # False: sent without the outbox (the database is out of reach)
    delivered: frozenset[str] = frozenset()
    queued_at: float = field(default_factory=time.monotonic)


def open_outbox_store(cfg: Config) -> SqlOutboxStore:
    """The notifier's own store: its calls never queue in front of a renewal."""
    return SqlOutboxStore(
        cfg.database.dsn,
        dialect=cfg.database.dialect,
        schema=cfg.database.schema,
        call_timeout=max(cfg.call_timeout, 2),
    )


class Notifier:
    """Contract: start() returns at once; the notifier then runs until stop() (or `stop_when` is set), which
    returns within a second. `holder_epoch()` returns this node's epoch while it holds the lease, else None."""

    def __init__(
        self,
        cfg: Config,
        node: str,
        store: SqlOutboxStore,
        holder_epoch: Callable[[], int | None],
        *,
        stop_when: asyncio.Event | None = None,
        promotion_wait: float | None = None,
    ) -> None:
        n = cfg.notify
        self.cfg, self.ncfg, self.node, self.store, self.holder_epoch = cfg, n, node, store, holder_epoch
        self.cluster = cfg.cluster
        self.poll = min(cfg.lease.heartbeat, 2.0)
        wait = promotion_wait if promotion_wait is not None else cfg.app.health.start_grace + 2 * cfg.lease.heartbeat
        self.folder = EventFolder(cfg.cluster, cfg.lease.ttl, n.events, n.min_interval, wait)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_SIZE)
        self.channels: list[Channel] = []
        # (key, channel, seconds from queued): the last deliveries, for tests and status
        self.delivered: deque[tuple[str, str, float]] = deque(maxlen=100)
        self._stop_when = stop_when
        self.tailing = asyncio.Event()  # set once the tail knows where history ends: later events are notified
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._active: set[str] = set()  # keys this node is delivering now
        self._unoffered: list[Notice] = []
        self._missing = False
        self._holding_since: float | None = None
        self._db_down_since: float | None = None
        self._db_down_told = False
        self.log = log.bind(node=node, cluster=cfg.cluster)

    @property
    def timeout(self) -> float:
        return max(self.cfg.call_timeout, 2.0)

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.channels = channels(self.ncfg, self._session)
        self._tasks = [
            asyncio.create_task(self._tail(), name="notify-tail"),
            asyncio.create_task(self._scan(), name="notify-scan"),
            *(asyncio.create_task(self._worker(), name=f"notify-worker-{i}") for i in range(WORKERS)),
        ]
        if self._stop_when is not None:
            self._tasks.append(asyncio.create_task(self._stop_on_request(self._stop_when)))
        self.log.info("notifier_started", channels=[c.shown for c in self.channels], kinds=len(self.ncfg.events))

    async def _stop_on_request(self, event: asyncio.Event) -> None:
        await event.wait()
        await self._cancel_tasks(skip=asyncio.current_task())

    async def stop(self) -> None:
        """Cancel everything; undelivered messages stay in the outbox. Returns within a second."""
        await self._cancel_tasks(skip=None)
        if self._session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._session.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await self.store.close()

    async def _cancel_tasks(self, skip: asyncio.Task[object] | None) -> None:
        tasks = [t for t in self._tasks if t is not skip and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WITHIN_S - 0.2)
        if self.queue.qsize():
            self.log.info("notifier_stopped_with_queued_messages", queued=self.queue.qsize())

    # ---- tail: events -> outbox ----------------------------------------------------------------------------

    async def _tail(self) -> None:
        start = last = await self._newest_event_id()  # nothing up to `start` is ever notified
        self.tailing.set()
        seen: deque[int] = deque(maxlen=SEEN_IDS)
        while True:
            try:
                events = await self.store.list_events(
                    self.cluster, limit=EVENTS_PER_READ, since_id=max(0, last - ID_OVERLAP), timeout=self.timeout
                )
            except StoreError as exc:
                self._db_failed(str(exc))
                await asyncio.sleep(self.poll)
                continue
            await self._db_ok()
            if len(events) == EVENTS_PER_READ:  # newest first: a burst this large hides older events
                self.log.warning("notify_events_skipped", read=len(events), after_id=last)
            now = time.monotonic()
            fresh = [ev for ev in reversed(events) if ev.id > start and ev.id not in seen]
            seen.extend(ev.id for ev in fresh)
            notices = [n for ev in fresh for n in self.folder.feed(ev, now)]
            last = max([last, *(ev.id for ev in events)])
            notices += self.folder.due(now)
            for notice in [*self._unoffered, *notices]:
                await self._offer(notice)
            if self.holder_epoch() is not None and len(self.cfg.nodes) > 1:
                if self._holding_since is None:
                    self._holding_since = now
                await self._watch_standby(now - self._holding_since)
            else:
                self._missing, self._holding_since = False, None  # the holder watches; a new holder starts afresh
            await asyncio.sleep(self.poll)

    async def _newest_event_id(self) -> int:
        """Only events from now on are notified: a restarted agent does not repeat history."""
        while True:
            try:
                newest = await self.store.list_events(self.cluster, limit=1, timeout=self.timeout)
                return newest[0].id if newest else 0
            except StoreError as exc:
                self._db_failed(str(exc))
                await asyncio.sleep(self.poll)

    async def _offer(self, notice: Notice) -> None:
        if notice in self._unoffered:
            self._unoffered.remove(notice)
        try:
            mine = await self.store.offer(
                self.cluster, notice.key, notice.kind, notice.to_json(), self.node, timeout=self.timeout
            )
        except StoreError as exc:
            self.log.warning("notification_not_offered", key=notice.key, error=str(exc))
            if len(self._unoffered) < UNOFFERED_MAX:
                self._unoffered.append(notice)
            return
        if mine:
            self.log.info("notification_claimed", kind=notice.kind, key=notice.key)
            self._enqueue(_Job(notice, outbox=True))

    def _enqueue(self, job: _Job) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:  # the scan takes it from the outbox later (this node or another)
            self.log.warning("notify_queue_full", key=job.notice.key)

    async def _watch_standby(self, holding_for: float) -> None:
        epoch = self.holder_epoch()
        after = self.ncfg.missing_after(self.cfg.lease.ttl)
        try:
            nodes = await self.store.list_nodes(self.cluster, timeout=self.timeout)
            missing = standby_missing(nodes, self.node, after, holding_for)
            if missing == self._missing:
                return
            kind = "standby_missing" if missing else "standby_back"
            detail = missing_detail(nodes, self.node) if missing else "a standby reports again"
            await self.store.record_event(self.cluster, self.node, kind, epoch, detail[:400], timeout=self.timeout)
            self._missing = missing
        except StoreError as exc:
            self.log.debug("standby_watch_failed", error=str(exc))

    def _db_failed(self, error: str) -> None:
        now = time.monotonic()
        if self._db_down_since is None:
            self._db_down_since = now
            return
        after = self.ncfg.unreachable_after(self.cfg.lease.ttl)
        if self._db_down_told or now - self._db_down_since < after:
            return
        self._db_down_told = True
        if "database_unreachable" not in self.ncfg.events:
            return
        at = datetime.now(UTC)
        notice = Notice(
            "database_unreachable",
            f"database_unreachable.{self.node}.{int(at.timestamp())}",
            self.cluster,
            self.node,
            None,
            at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            f"{self.node} cannot reach the database for {now - self._db_down_since:.0f}s",
            {"error": error[:300], "note": "sent by this node directly: the outbox is in the database"},
        )
        self._enqueue(_Job(notice, outbox=False))

    async def _db_ok(self) -> None:
        since, told = self._db_down_since, self._db_down_told
        self._db_down_since, self._db_down_told = None, False
        if since is None or not told:
            return
        detail = f"{self.node} could not reach the database for {time.monotonic() - since:.0f}s"
        with contextlib.suppress(StoreError):
            await self.store.record_event(self.cluster, self.node, "database_back", None, detail, timeout=self.timeout)

    # ---- scan: take over what a dead sender left ----------------------------------------------------------

    async def _scan(self) -> None:
        period = max(1.0, self.ncfg.takeover_after / 4)
        older_ms = int(self.ncfg.takeover_after * 1000)
        purged_at = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                for row in await self.store.stale(self.cluster, older_ms, MAX_AGE_MS, timeout=self.timeout):
                    if row.key in self._active:
                        continue
                    if await self.store.claim(self.cluster, row.key, self.node, older_ms, timeout=self.timeout):
                        self.log.warning("notification_taken_over", key=row.key, previous=row.claimed_by)
                        self._enqueue(_Job(Notice.from_json(row.body), outbox=True, delivered=row.delivered))
                if time.monotonic() - purged_at > 3600:
                    await self.store.purge_sent(KEEP_SENT_MS, timeout=self.timeout)
                    purged_at = time.monotonic()
            except StoreError as exc:
                self.log.debug("notify_scan_failed", error=str(exc))
            except (ValueError, KeyError) as exc:  # a row whose body this version cannot read
                self.log.warning("notify_scan_bad_row", error=str(exc))

    # ---- worker: deliver --------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            self._active.add(job.notice.key)
            try:
                await self.deliver(job)
            finally:
                self._active.discard(job.notice.key)

    async def deliver(self, job: _Job) -> None:
        """Every channel not yet delivered, at once, each retried until it answers; then the message is marked sent.

        A channel that has not answered within takeover_after is given up for now: the message stays unsent, its
        claim is no longer refreshed, and after another takeover_after the scan (of any node) takes it up again
        for the channels still missing. So a receiver that keeps failing is retried for as long as the message
        is younger than a day, without holding up the other messages."""
        delivered = set(job.delivered)
        notice = job.notice
        pending = [c for c in self.channels if c.name not in delivered]
        sending = asyncio.gather(*(self._deliver_one(job, c, delivered) for c in pending), return_exceptions=True)
        keeper = asyncio.create_task(self._keep_claim(notice.key)) if job.outbox else None
        try:
            waiting: set[asyncio.Future[Any]] = {sending}
            if keeper is not None:
                waiting.add(keeper)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():  # the claim was lost: another node has taken the message over
                self.log.warning("notification_claim_lost", key=notice.key)
                return
        finally:
            if keeper is not None:
                keeper.cancel()
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
        failed = [r for r in sending.result() if isinstance(r, BaseException)]
        if failed:
            self.log.warning(
                "notification_postponed",
                key=notice.key,
                delivered=sorted(delivered),
                error=str(failed[0])[:200],
                again_in_s=self.ncfg.takeover_after if job.outbox else None,
            )
            return
        if job.outbox:
            await self._mark_sent(notice.key, frozenset(delivered))

    async def _deliver_one(self, job: _Job, channel: Channel, delivered: set[str]) -> None:
        notice = job.notice
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeliveryFailed),
            stop=stop_after_delay(self.ncfg.takeover_after),
            reraise=True,
            wait=wait_exponential(multiplier=0.5, max=30) + wait_random(0, 0.5),
            before_sleep=lambda state: self.log.warning(
                "notification_attempt_failed",
                key=notice.key,
                channel=channel.shown,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else "",
            ),
        )
        answer = ""
        async for attempt in retrying:
            with attempt:
                answer = await channel.send(notice, self.node)
        latency = time.monotonic() - job.queued_at
        self.delivered.append((notice.key, channel.name, latency))
        self.log.info(
            "notification_delivered", kind=notice.kind, key=notice.key, channel=channel.shown, answer=answer[:120]
        )
        delivered.add(channel.name)
        if job.outbox:
            with contextlib.suppress(StoreError):
                await self.store.record_delivery(
                    self.cluster, notice.key, self.node, frozenset(delivered), None, timeout=self.timeout
                )

    async def _keep_claim(self, key: str) -> None:
        """Refresh the claim every quarter of takeover_after; return when it is no longer ours."""
        period = max(0.5, self.ncfg.takeover_after / 4)
        while True:
            await asyncio.sleep(period)
            try:
                if not await self.store.touch(self.cluster, key, self.node, timeout=self.timeout):
                    return
            except StoreError as exc:
                self.log.debug("notification_claim_not_refreshed", key=key, error=str(exc))

    async def _mark_sent(self, key: str, delivered: frozenset[str]) -> None:
        for _ in range(10):
            try:
                await self.store.mark_sent(self.cluster, key, self.node, delivered, timeout=self.timeout)
                return
            except StoreError as exc:
                self.log.warning("notification_not_marked_sent", key=key, error=str(exc))
                await asyncio.sleep(1.0)


def start_notifier(
    cfg: Config, node: str, holder_epoch: Callable[[], int | None], stop_when: asyncio.Event
) -> Notifier | None:
    """The notifier of `fos run`, started; None when [notify] configures no mail and no webhook."""
    if not cfg.notify.enabled:
        return None
    notifier = Notifier(cfg, node, open_outbox_store(cfg), holder_epoch, stop_when=stop_when)
    notifier.start()
    return notifier
