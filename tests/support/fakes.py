"""Fakes for fast unit tests of the agent's loop: a binder that models the kernel's address lifetime, an
application, and a clock whose CLOCK_BOOTTIME can jump (a suspend). Each records what was done to it, and when.
The real ones are proven on namespaces and real processes elsewhere."""

from __future__ import annotations

import asyncio
import math
import time

from agent.clock import SUSPEND_THRESHOLD_S, SystemClock
from netops import KERNEL_LATENESS_S, AddressConflict, DeadlinePassed


class FakeBinder:
    """An address with a kernel lifetime: it vanishes `lifetime` seconds after its last write, like the kernel
    removing it (without the kernel's lateness). `delays` holds extra seconds for the next bind/refresh calls
    (a slow netlink call, awaited); `probe_seconds` is how long a probe takes."""

    def __init__(self, bound: bool = False, conflict: bool = False, probe_seconds: float = 0.0) -> None:
        self._expires_at: float | None = float("inf") if bound else None
        self.conflict = conflict
        self.probe_seconds = probe_seconds
        self.delays: list[float] = []
        self.ops: list[tuple[str, float, int | None]] = []
        self.lifetime: int | None = None
        self.fail_with: BaseException | None = None  # raised by the next bind/refresh (an unexpected error)
        self.freeze_before_write = 0.0  # the next bind/refresh stops the whole process this long before writing
        self.announce_seconds = 0.0  # how long an announcement takes (count x interval)

    @property
    def written_lifetime(self) -> int | None:
        return self.lifetime

    @property
    def bound(self) -> bool:
        return self._expires_at is not None and time.monotonic() < self._expires_at

    def _write(self, lifetime: int | None) -> None:
        self.lifetime = lifetime
        self._expires_at = float("inf") if lifetime is None else time.monotonic() + lifetime

    async def _delay(self) -> None:
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))

    def _at_write(self, lifetime: int | None, not_after: float | None) -> int | None:
        """What the real binder does right before the netlink write: a freeze may land here, and `not_after`
        caps the lifetime (DeadlinePassed when not even 1 s fits)."""
        if self.freeze_before_write:
            time.sleep(self.freeze_before_write)  # SIGSTOP of the whole process, then SIGCONT
            self.freeze_before_write = 0.0
        if not_after is None or lifetime is None:
            return lifetime
        room = not_after - SystemClock().now() - KERNEL_LATENESS_S
        if room < 1:
            raise DeadlinePassed(1 - room)
        return min(lifetime, math.floor(room))

    async def is_bound(self) -> bool:
        return self.bound

    async def probe_until_clear(self, window: float) -> str | None:
        self.ops.append(("probe", time.monotonic(), None))
        await asyncio.sleep(self.probe_seconds)
        return "02:00:00:00:00:99" if self.conflict else None

    async def bind(self, lifetime: int | None = None, *, force: bool = False, not_after: float | None = None) -> bool:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        if self.conflict and not force:
            raise AddressConflict("10.0.0.100", "02:00:00:00:00:99")
        if not force:
            await asyncio.sleep(self.probe_seconds)  # the probe a non-forced bind does first
        await self._delay()
        lifetime = self._at_write(lifetime, not_after)
        self.ops.append(("bind", time.monotonic(), lifetime))
        added = not self.bound
        self._write(lifetime)
        return added

    async def refresh(self, lifetime: int, *, not_after: float | None = None) -> bool:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        await self._delay()
        if not self.bound:
            return False
        capped = self._at_write(lifetime, not_after)
        self.ops.append(("refresh", time.monotonic(), capped))
        self._write(capped)
        return True

    async def unbind(self) -> bool:
        self.ops.append(("unbind", time.monotonic(), None))
        removed, self._expires_at = self.bound, None
        return removed

    async def announce(self) -> None:
        self.ops.append(("announce", time.monotonic(), None))
        await asyncio.sleep(self.announce_seconds)

    def times(self, op: str) -> list[float]:
        return [t for name, t, _ in self.ops if name == op]


class FakeApp:
    def __init__(self) -> None:
        self.exited = asyncio.Event()
        self.env: dict[str, str] | None = None
        self.started_at: list[float] = []
        self.stopped_at: list[float] = []
        self.detached = False
        self._running = False
        self._unattached = False  # a test sets it: adopted from a keeper that cannot re-attach
        self.stop_seconds = 0.0  # a test sets it: how long a stop takes (a slow application)
        self.stopping = asyncio.Event()  # set when a stop begins

    async def start(self, env: dict[str, str]) -> None:
        self.exited = asyncio.Event()
        self.env = env
        self.started_at.append(time.monotonic())
        self._running = True

    async def stop(self) -> None:
        self.stopping.set()
        if self.stop_seconds > 0:
            await asyncio.sleep(self.stop_seconds)
        self.stopped_at.append(time.monotonic())
        self._running = self._unattached = False

    def running(self) -> bool | None:
        return self._running

    def detach(self) -> None:
        self.detached = True

    def unattached(self) -> bool:
        return self._unattached and self._running

    def crash(self) -> None:
        self._running = False
        self.exited.set()


class JumpingClock(SystemClock):
    """CLOCK_BOOTTIME plus an offset the test can raise: `suspend(s)` is a machine that slept s seconds
    (BOOTTIME jumps, MONOTONIC does not). Sleepers on `sleep_until` wake at the jump, as a timerfd on
    CLOCK_BOOTTIME does at resume."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self._jumped = asyncio.Event()
        self._seen_offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset

    def suspend(self, seconds: float) -> None:
        self.offset += seconds
        self._jumped.set()
        self._jumped = asyncio.Event()

    async def sleep_until(self, when: float) -> None:
        while self.now() < when:
            jumped = self._jumped
            try:
                async with asyncio.timeout(when - self.now()):
                    await jumped.wait()
            except TimeoutError:
                pass

    def suspended_for(self) -> float:
        gap, self._seen_offset = self.offset - self._seen_offset, self.offset
        super().suspended_for()
        return gap if gap > SUSPEND_THRESHOLD_S else 0.0
