"""An agent on fakes, for the fast agent tests: a small-timing config, the node wrapper and a polling wait."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import Config, parse
from agent.runner import Agent
from tests.support.fakes import FakeApp, FakeBinder


def config(
    ttl: float = 0.6,
    heartbeat: float = 0.15,
    driver: str = "none",
    cluster: dict[str, Any] | None = None,
    priorities: tuple[int, int] = (0, 0),
    tables: dict[str, Any] | None = None,
    **app: Any,
) -> Config:
    """Two nodes m1, m2 (with these priorities); `cluster` adds [cluster] keys, `tables` whole tables ([flap],
    [maintenance]); the keyword arguments go to [application]."""
    return parse(
        {
            # wake_port 0: in-process agents have no hint listener (service.serve starts it), so they are run as
            # with hints off (the holder reads its control state every half heartbeat); tests of hints set it.
            "cluster": {
                "name": "c1",
                "address_driver": driver,
                "common_ip": "10.0.0.100/24",
                "wake_port": 0,
                **(cluster or {}),
            },
            "nodes": [
                {"name": "m1", "interface": "eth0", "priority": priorities[0]},
                {"name": "m2", "interface": "eth0", "priority": priorities[1]},
            ],
            "database": {"dsn": "unused", "call_timeout": heartbeat / 2},
            "lease": {"ttl": ttl, "heartbeat": heartbeat, "fence_margin": 0.1, "min_hold": 0.2},
            "application": {"hold_off": 0.5, "health": {"interval": 0.05, "timeout": 0.05, "start_grace": 1}, **app},
            **(tables or {}),
        }
    )


def boottime() -> float:
    return SystemClock().now()


class Node:
    def __init__(
        self,
        cfg: Config,
        name: str,
        store: Any,
        binder: FakeBinder | None = None,
        instance: str | None = None,
        clock: Clock | None = None,
        unproven_mark: str | None = None,
    ) -> None:
        self.binder = binder or FakeBinder()
        self.app = FakeApp()
        self.agent = Agent(
            cfg,
            cfg.node(name),
            store,
            self.binder,
            self.app,
            clock or SystemClock(),
            instance=instance or f"{name}-instance",
            unproven_mark=unproven_mark,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Node:
        self.task = asyncio.create_task(self.agent.run())
        return self

    async def kill(self) -> None:
        """Vanish without releasing anything, like a killed process."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start
