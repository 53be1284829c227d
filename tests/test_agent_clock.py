"""The agent's clock: a CLOCK_BOOTTIME timer (a timerfd) that ends exactly at its instant, and the suspend
detector that must not mistake ordinary sleeping or scheduling for a suspend."""

from __future__ import annotations

import asyncio
import time

from agent.clock import SystemClock


async def test_sleep_until_ends_at_its_boottime_instant() -> None:
    clock = SystemClock()
    target = clock.now() + 0.2
    await clock.sleep_until(target)
    late = clock.now() - target
    assert 0 <= late < 0.05, f"woke {late:.3f}s after the instant"


async def test_sleep_until_a_past_instant_returns_at_once() -> None:
    clock = SystemClock()
    started = time.monotonic()
    await clock.sleep_until(clock.now() - 1)
    assert time.monotonic() - started < 0.01


async def test_a_cancelled_sleep_until_releases_its_timer() -> None:
    clock = SystemClock()
    task = asyncio.create_task(clock.sleep_until(clock.now() + 10))
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1)
    assert task in done and task.cancelled()


async def test_sleeping_and_busy_work_are_not_taken_for_a_suspend() -> None:
    clock = SystemClock()
    clock.suspended_for()
    await asyncio.sleep(0.3)
    end = time.monotonic() + 0.2
    while time.monotonic() < end:  # a busy loop: the process keeps the CPU, nothing is suspended
        pass
    assert clock.suspended_for() == 0.0
