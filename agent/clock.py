"""The agent's clock, injected so tests can drive time. Deadlines use CLOCK_BOOTTIME, which (unlike
CLOCK_MONOTONIC) keeps counting while the machine is suspended: a holder that slept must notice it is late."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


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
