"""The common IP on this node, level-triggered against the lease.

While a renewal sent less than F ago succeeded (a `Holding`) and the promotion's conflict probe passed, the
address must be bound, with a kernel lifetime that ends before the fence deadline F; otherwise it must not be.
The agent calls `reconcile` after every successful renewal, `claim` once when promoting, and `drop` when letting
go. All changes of the address go through one lock, so a reconciliation and a drop never interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from netops import KERNEL_LATENESS_S, AddressBinder, AddressConflict, DeadlinePassed, NetopsError

from .clock import Clock
from .config import Config
from .metrics import Metrics
from .roles import Holding
from .timing import address_lifetime


class CommonIp:
    def __init__(self, cfg: Config, binder: AddressBinder, clock: Clock, metrics: Metrics, log: Any) -> None:
        self.cfg, self.binder, self.clock, self.metrics = cfg, binder, clock, metrics
        self.log = log  # the agent rebinds it with role and epoch at every transition
        self.bound = False
        self.expires_at: float | None = None  # no later than when the kernel will remove the address we wrote
        self._wanted = False  # the promotion's probe passed: from then until drop(), the address must be up
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()

    @property
    def managed(self) -> bool:
        """False with address_driver = "none": the binder only records the state (NoneBinder)."""
        return self.cfg.address_driver == "netlink"

    async def claim(self, holding: Holding, announce: bool = True) -> None:
        """Probe for another owner, then bind (and announce, unless `announce` is False: the caller announces
        beside other work, e.g. the app's start). Right after taking over an *expired* lease the old holder's address
        may still be up for up to G (the kernel's lateness): probe again until it is gone before calling it a
        conflict (AddressConflict). If not even a 1 s lifetime fits before F any more (a slow acquisition, a long
        probe), wait for the next successful renewal to make room: the caller's fence deadline bounds the wait."""
        if self.managed and self.cfg.probe_conflict:
            window = KERNEL_LATENESS_S if holding.took_over else 0.0
            mac = await self.binder.probe_until_clear(window)
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
