"""The common IP on this node, level-triggered against the lease.

While a renewal sent less than F ago succeeded (a `Holding`) and the promotion's conflict probe passed, the
address must be bound, with a kernel lifetime that ends before the fence deadline F; otherwise it must not be.
The agent calls `reconcile` after every successful renewal, `claim` once when promoting, and `drop` when letting
go. All changes of the address go through one lock, so a reconciliation and a drop never interleave.

A standby about to take over an expired lease probes for another owner during the last moments of its wait
(`probe_ahead`, started when roles.probe_ahead_at says); `claim` then binds without probing again when that round
heard nobody and ended at most PROBE_AHEAD_FRESH_S before the claim, i.e. once the acquisition answered
(`ahead_covers`): measured to the send, a compare-and-set answered late would widen the blind spot unbounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netops import KERNEL_LATENESS_S, AddressBinder, AddressConflict, DeadlinePassed, NetopsError

from .clock import Clock
from .config import Config
from .metrics import Metrics
from .roles import PROBE_AHEAD_LEAD_S, Holding
from .timing import address_lifetime

# How long a probe round that heard nobody still stands for "no other owner" at the acquisition: the round is
# placed to end at the expiry, and the acquisition follows one lease read and the compare-and-set later (a few
# ms; p99 under 20 ms on the bench's databases, up to the call timeout on a slow one). It bounds the time in which
# a foreign host could take the address unseen between the probe and our bind (a probe after the acquisition
# leaves a few ms), at about one probe round; a slower read falls back to probing after the acquisition.
PROBE_AHEAD_FRESH_S = 0.25


@dataclass(frozen=True)
class ProbeAhead:
    """The outcome of a conflict probe round run ahead of an acquisition."""

    clear: bool  # nobody answered for the common IP during the whole round
    ended_at: float  # local clock instant the round ended
    owner: str | None = None  # the MAC that answered, or the error that ended the round


def ahead_covers(ahead: ProbeAhead | None, sent: float) -> bool:
    """True when a probe round ahead stands in for the probe after an acquisition sent at local time `sent`: it
    heard nobody, and it ended no more than PROBE_AHEAD_FRESH_S before `sent` (later is fresher still)."""
    return ahead is not None and ahead.clear and ahead.ended_at >= sent - PROBE_AHEAD_FRESH_S


class CommonIp:
    def __init__(self, cfg: Config, binder: AddressBinder, clock: Clock, metrics: Metrics, log: Any) -> None:
        self.cfg, self.binder, self.clock, self.metrics = cfg, binder, clock, metrics
        self.log = log  # the agent rebinds it with role and epoch at every transition
        self.bound = False
        self.expires_at: float | None = None  # no later than when the kernel will remove the address we wrote
        self._wanted = False  # the promotion's probe passed: from then until drop(), the address must be up
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()
        self.ahead: ProbeAhead | None = None  # the last probe round ahead of an acquisition
        self._ahead_task: asyncio.Task[None] | None = None

    @property
    def managed(self) -> bool:
        """False with address_driver = "none": the binder only records the state (NoneBinder)."""
        return self.cfg.address_driver == "netlink"

    @property
    def probes(self) -> bool:
        """A promotion probes for another owner before binding (the netlink driver, cluster.probe_conflict on)."""
        return self.managed and self.cfg.probe_conflict

    @property
    def probing_ahead(self) -> bool:
        """A probe round ahead of an acquisition is under way."""
        return self._ahead_task is not None and not self._ahead_task.done()

    def start_probe_ahead(self) -> None:
        """Start `probe_ahead` as a task of its own (nothing if one runs): the caller goes on waiting and reads
        the lease at its time, whatever the round is doing."""
        if self.probes and not self.probing_ahead:
            self._ahead_task = asyncio.create_task(self.probe_ahead())

    async def probe_ahead(self) -> None:
        """One conflict probe round ahead of an acquisition, its outcome recorded in `ahead` for `claim`. Bounded
        by the probe timeout plus the round's own overhead; never raises NetopsError (a failed round is recorded
        as not clear); a cancelled round records nothing."""
        self.ahead = None
        if not self.probes:
            return
        try:
            mac = await self.binder.probe_until_clear(0.0)
        except NetopsError as exc:
            mac = f"the probe failed: {exc}"
        self.ahead = ProbeAhead(mac is None, self.clock.now(), mac)
        self.log.info("ip_probed_ahead", clear=mac is None, owner=mac)

    async def close(self) -> None:
        """End a probe round ahead still under way (the agent is stopping), and wait for it: its worker thread
        stops within one poll of the probe loop."""
        task, self._ahead_task = self._ahead_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def _ahead_of(self, sent: float) -> bool:
        """True when a probe round ahead covers an acquisition sent at `sent`; a round still under way is waited
        for (it ends sooner than a round started now would), for at most one round's length."""
        task = self._ahead_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.cfg.probe_timeout + PROBE_AHEAD_LEAD_S)
            if not task.done():
                task.cancel()  # not awaited: its thread stops within one poll, and its outcome is not recorded
        covered = ahead_covers(self.ahead, sent)
        if covered:
            assert self.ahead is not None
            self.log.info(
                "ip_probe_skipped",
                why="a probe round just before the acquisition heard nobody",
                ended_before_acquisition=round(sent - self.ahead.ended_at, 3),
            )
        self.ahead = None  # used once
        return covered

    async def claim(self, holding: Holding, announce: bool = True) -> None:
        """Probe for another owner, then bind (and announce, unless `announce` is False: the caller announces
        beside other work, e.g. the app's start). Right after taking over an *expired* lease the old holder's address
        may still be up for up to G (the kernel's lateness): probe again until it is gone before calling it a
        conflict (AddressConflict). No probe when a round ahead of the acquisition (`probe_ahead`) heard nobody and
        is fresh (`ahead_covers`): it says what this probe would. If not even a 1 s lifetime fits before F any more
        (a slow acquisition, a long probe), wait for the next successful renewal to make room: the caller's fence
        deadline bounds the wait."""
        # Freshness to now (the acquisition has answered), not to when it was sent: a slow answer (up to the
        # call timeout) or a freeze in between must not stretch the time between the round and the bind.
        if self.probes and not await self._ahead_of(self.clock.now()):
            window = KERNEL_LATENESS_S if holding.took_over else 0.0
            started = self.clock.now()
            mac = await self.binder.probe_until_clear(window)
            self.log.info("ip_probed", took=round(self.clock.now() - started, 3), owner=mac)
            if mac:
                raise AddressConflict(str(self.cfg.common_ip.ip if self.cfg.common_ip else ""), mac)
        self._wanted = True
        await self.reconcile(lambda: holding, rebinding_is_news=False, announce=announce)  # NetopsError: fails it
        if not self.bound:
            self.log.info("ip_waits_for_renewal")
            await self._up.wait()

    async def reconcile(
        self, holding_now: Callable[[], Holding | None], rebinding_is_news: bool = True, announce: bool = True
    ) -> None:
        """Make the address match the lease: present, with a lifetime that ends before F.

        The binder cuts the lifetime again in its worker thread right before the netlink write (`not_after`), so
        that write time + lifetime + G <= F however long we were delayed on the way; if not even a second fits,
        nothing is written (DeadlinePassed) and what the kernel has, computed against an earlier and smaller F,
        ends in time anyway; after the write the binder checks the clock again and shortens or removes the address
        if it was delayed between the cut and the write. The Holding is read once the lock is ours (a reconcile
        queued behind another must use the newest renewal). The address is announced only after a successful
        write, and only while F is still ahead. Raises NetopsError (not DeadlinePassed, which only means "not
        extended this time") when the address cannot be managed: the caller decides to step down."""
        async with self._lock:
            holding = holding_now()
            if not self._wanted or holding is None:
                return
            lifetime = address_lifetime(holding.fence_at, self.clock.now()) if self.managed else None
            if self.managed and lifetime is None:
                return
            try:
                not_after = holding.fence_at if lifetime is not None else None
                before = self.clock.now()
                added = await self.binder.bind(lifetime, force=True, not_after=not_after)
                written = self.binder.written_lifetime
                self.expires_at = None if written is None else before + written
                self._set_bound(True)
                if added:
                    if rebinding_is_news:
                        self.log.warning("ip_rebound", lifetime=lifetime)  # the kernel had let it lapse
                    if announce and self.clock.now() < holding.fence_at:
                        await self.binder.announce()
            except DeadlinePassed as exc:
                self.log.warning("ip_not_extended", error=str(exc))

    async def announce(self, holding: Holding | None) -> None:
        """A periodic gratuitous announcement, only while a renewal sent less than F ago succeeded: after a
        freeze the announcer's timer may fire before the hold loop notices the deadline."""
        # Not under the lock: an announcement may take count x interval, and a reconciliation must not wait for
        # it. No packet follows a drop: the agent cancels and awaits the announcer before dropping the address.
        if self.bound and holding is not None and self.clock.now() < holding.fence_at:
            try:
                await self.binder.announce()
            except NetopsError as exc:
                self.log.debug("announce_failed", error=str(exc))

    async def drop(self) -> bool:
        """Remove the address; True once it is confirmed absent (removed now, or not there)."""
        async with self._lock:
            self._wanted = False
            try:
                if await self.binder.unbind():
                    self.log.info("ip_unbound")
                gone = True
            except NetopsError as exc:
                self.log.error("ip_unbind_failed", error=str(exc))
                try:
                    gone = not await self.binder.is_bound()
                except NetopsError:
                    gone = False
            self._set_bound(not gone)
            if gone:
                self.expires_at = None
            return gone

    def _set_bound(self, bound: bool) -> None:
        self.bound = bound
        self.metrics.ip_bound.set(1 if bound else 0)
        if bound:
            self._up.set()
        else:
            self._up.clear()
