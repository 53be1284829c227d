"""Fakes for fast unit tests of the agent's loop: a binder and an application that record what was done to
them, and when. The real ones are proven on namespaces and real processes elsewhere."""

from __future__ import annotations

import asyncio
import time

from netops import AddressConflict


class FakeBinder:
    def __init__(self, bound: bool = False, conflict: bool = False) -> None:
        self.bound = bound
        self.conflict = conflict
        self.ops: list[tuple[str, float, int | None]] = []
        self.lifetime: int | None = None

    async def is_bound(self) -> bool:
        return self.bound

    async def bind(self, lifetime: int | None = None, *, force: bool = False) -> bool:
        if self.conflict and not force:
            raise AddressConflict("10.0.0.100", "02:00:00:00:00:99")
        self.ops.append(("bind", time.monotonic(), lifetime))
        added, self.bound, self.lifetime = not self.bound, True, lifetime
        return added

    async def refresh(self, lifetime: int) -> bool:
        self.ops.append(("refresh", time.monotonic(), lifetime))
        if self.bound:
            self.lifetime = lifetime
        return self.bound

    async def unbind(self) -> bool:
        self.ops.append(("unbind", time.monotonic(), None))
        removed, self.bound = self.bound, False
        return removed

    async def announce(self) -> None:
        self.ops.append(("announce", time.monotonic(), None))

    def times(self, op: str) -> list[float]:
        return [t for name, t, _ in self.ops if name == op]


class FakeApp:
    def __init__(self) -> None:
        self.exited = asyncio.Event()
        self.env: dict[str, str] | None = None
        self.started_at: list[float] = []
        self.stopped_at: list[float] = []
        self._running = False

    async def start(self, env: dict[str, str]) -> None:
        self.exited = asyncio.Event()
        self.env = env
        self.started_at.append(time.monotonic())
        self._running = True

    async def stop(self) -> None:
        self.stopped_at.append(time.monotonic())
        self._running = False

    def running(self) -> bool | None:
        return self._running

    def crash(self) -> None:
        self._running = False
        self.exited.set()
