"""The agent's clock, injected so tests can drive time. Deadlines use CLOCK_BOOTTIME, which (unlike
CLOCK_MONOTONIC) keeps counting while the machine is suspended: a holder that slept must notice it is late.

asyncio's own timers run on CLOCK_MONOTONIC, which stops during a suspend: a wait of "until the fence deadline"
on them would end the suspend's length too late. So `sleep_until` waits on a timerfd armed on CLOCK_BOOTTIME
(it fires at once on resume when its instant passed while suspended), and `suspended_for` compares the progress
of the two clocks so that every wake-up can tell whether the machine slept in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")

# A machine that slept makes CLOCK_BOOTTIME run ahead of CLOCK_MONOTONIC; nothing else separates them (NTP slews
# both alike). The two are read between two MONOTONIC readings, so a preemption between the reads cannot pass
# for a suspend; the threshold stays well above what is left of scheduling noise. A suspend that passes the fence
# deadline is caught anyway by the CLOCK_BOOTTIME timer.
SUSPEND_THRESHOLD_S = 0.25
_READ_TOLERANCE_S = 0.005


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that counts suspend (CLOCK_BOOTTIME); only differences are meaningful."""

    async def sleep(self, seconds: float) -> None:
        """Sleep about `seconds` (asyncio's timer; may end late by a suspend's length)."""

    async def sleep_until(self, when: float) -> None:
        """Sleep until now() >= when, and no longer: a suspend that passes `when` ends the sleep at resume."""

    def suspended_for(self) -> float:
        """Seconds the machine was suspended since the previous call (0.0 if none)."""


class _TimerSpec(ctypes.Structure):
    _fields_ = [
        ("interval_sec", ctypes.c_long),
        ("interval_nsec", ctypes.c_long),
        ("value_sec", ctypes.c_long),
        ("value_nsec", ctypes.c_long),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


def _boottime_timerfd(when: float) -> int:
    """A non-blocking timerfd that becomes readable once CLOCK_BOOTTIME reaches `when` (absolute)."""
    fd = _libc.timerfd_create(time.CLOCK_BOOTTIME, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create(CLOCK_BOOTTIME) failed")
    when = max(when, 1e-9)  # an all-zero value would disarm the timer
    sec = int(when)
    spec = _TimerSpec(0, 0, sec, int((when - sec) * 1e9))
    if _libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, "timerfd_settime failed")
    return int(fd)


class SystemClock:
    def __init__(self) -> None:
        self._last = _both_clocks()

    def now(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: float) -> None:
        if self.now() >= when:
            return
        loop = asyncio.get_running_loop()
        fd = _boottime_timerfd(when)
        fired = loop.create_future()

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 8)
            if not fired.done():
                fired.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await fired
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def suspended_for(self) -> float:
        boot, mono = _both_clocks()
        last_boot, last_mono = self._last
        self._last = (boot, mono)
        gap = (boot - last_boot) - (mono - last_mono)
        return gap if gap > SUSPEND_THRESHOLD_S else 0.0


def _both_clocks() -> tuple[float, float]:
    """(CLOCK_BOOTTIME, CLOCK_MONOTONIC) read as close together as the scheduler lets us: retried while a
    preemption separates them."""
    for _ in range(5):
        before = time.monotonic()
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        after = time.monotonic()
        if after - before <= _READ_TOLERANCE_S:
            break
    return boot, after


async def within(aw: Awaitable[T], timeout: float) -> T:
    """Like asyncio.wait_for, but on Python 3.11 wait_for can swallow a cancellation that arrives as the awaited
    thing completes (a task then never ends); asyncio.timeout does not."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await within(event.wait(), max(0.0, timeout))
    return event.is_set()


async def wait_either(first: asyncio.Event, second: asyncio.Event, timeout: float) -> None:
    """Wait until either event is set, at most `timeout` seconds."""
    if first.is_set() or second.is_set():
        return
    waiters = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
