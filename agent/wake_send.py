"""Sending wake-up hints (agent/wake.py says what a hint is and why it is harmless): the leaving holder to the
other nodes (Waker, on the agent), a command to every node (wake_peers). Sending never waits: the datagrams go out
from a non-blocking socket to addresses resolved beforehand, off the loop thread, or, not yet resolved, from a task
of their own; a peer whose host does not resolve gets no hint (logged once)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .config import Config, peer_host
from .wake import COMMAND_SENDER, Hint, HintKind, encode, log

if TYPE_CHECKING:  # not imported at run time: a command (fos switchover) needs no Prometheus client
    from .metrics import Metrics

RESOLVE_TIMEOUT_S = 0.5  # a command waits at most this long for the peers' names to resolve
RESOLVE_AGENT_S = 10.0  # an agent's own resolution, in a task of its own
RESOLVE_AGAIN_S = 300.0  # an agent re-resolves its peers' names this often (a changed address is learnt)


class Waker:
    """Sends hints from `sender` to every other node's host (the host of its url, else its name) at the wake
    port. Addresses are resolved off the loop thread and kept; a host that does not resolve gets no hint (logged
    once)."""

    def __init__(self, cfg: Config, sender: str, metrics: Metrics | None = None, quiet: bool = False) -> None:
        """`quiet`: log nothing (a command's output is its one line)."""
        self.cluster, self.sender, self.port, self.metrics = cfg.cluster, sender, cfg.wake_port, metrics
        self.log: Any = _Quiet() if quiet else log
        self.hosts = [] if self.port == 0 else sorted({peer_host(n) for n in cfg.nodes if n.name != sender})
        self._addresses: dict[str, tuple[float, list[tuple[int, Any]]]] = {}  # host: (when, [(family, sockaddr)])
        self._unresolved_logged: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def resolve(self, timeout: float = RESOLVE_TIMEOUT_S) -> None:
        """Resolve every host not resolved within RESOLVE_AGAIN_S, at most `timeout` seconds (all at once)."""
        now = time.monotonic()
        due = [h for h in self.hosts if h not in self._addresses or now - self._addresses[h][0] >= RESOLVE_AGAIN_S]
        if due:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(self._resolve(h) for h in due))

    async def _resolve(self, host: str) -> None:
        try:
            self._addresses[host] = (time.monotonic(), await lookup(host, self.port))
        except (OSError, UnicodeError) as exc:
            if host not in self._unresolved_logged:
                self._unresolved_logged.add(host)
                self.log.warning("wake_peer_unresolved", host=host, error=str(exc), why="it gets no wake-up hints")

    def prefetch(self) -> None:
        """Resolve the peers' hosts in a task (at the agent's start), so that the first hint goes out at once."""
        self._spawn(self.resolve(RESOLVE_AGENT_S))

    def hint(self, kind: HintKind) -> None:
        """Send the hint now (to the resolved hosts) and, in a task, to the others once resolved: never waits, and
        never raises (an optimisation: nothing about it may disturb the let-go or the fail-back that sends it)."""
        if not self.hosts:
            return
        try:
            self._send(kind)
            if any(h not in self._addresses for h in self.hosts) or self._stale():
                self._spawn(self._resolve_then(kind))
        except Exception as exc:
            self.log.debug("wake_hint_failed", error=f"{type(exc).__name__}: {exc}")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a reference, or the task may be collected before it ran
        task.add_done_callback(self._tasks.discard)

    async def wake_peers(self, kind: HintKind, timeout: float = RESOLVE_TIMEOUT_S) -> int:
        """Resolve (at most `timeout`), then send; the number of datagrams sent."""
        await self.resolve(timeout)
        return self._send(kind)

    def _stale(self) -> bool:
        now = time.monotonic()
        return any(now - at >= RESOLVE_AGAIN_S for at, _ in self._addresses.values())

    async def _resolve_then(self, kind: HintKind) -> None:
        unsent = [h for h in self.hosts if h not in self._addresses]
        await self.resolve(RESOLVE_AGENT_S)
        self._send(kind, only=unsent)

    def _send(self, kind: HintKind, only: list[str] | None = None) -> int:
        payload = encode(Hint(self.cluster, self.sender, kind))
        targets = [a for h in (self.hosts if only is None else only) for a in self._addresses.get(h, (0.0, []))[1]]
        sent = 0
        socks: dict[int, socket.socket] = {}
        try:
            for family, address in targets:
                try:
                    sock = socks.get(family) or socks.setdefault(family, _datagram_socket(family))
                    sock.sendto(payload, address)
                    sent += 1
                except OSError as exc:  # unreachable, no route, a full buffer: the poll still comes
                    self.log.debug("wake_hint_not_sent", address=str(address[0]), error=str(exc))
        finally:
            for sock in socks.values():
                sock.close()
        if self.metrics is not None and sent:
            self.metrics.wake_hints_sent.inc(sent)
        return sent

    async def close(self, timeout: float = RESOLVE_TIMEOUT_S) -> None:
        """Let the hints still being resolved go out (at most `timeout`), then cancel them."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()


async def lookup(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, sockaddr) of `host`: a literal IP at once, a name in a daemon thread. Not the loop's executor: a
    command's exit would wait for a resolver that hangs; a daemon thread is simply left behind."""
    with contextlib.suppress(socket.gaierror):
        return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST))
    loop = asyncio.get_running_loop()
    found: asyncio.Future[list[tuple[int, Any]]] = loop.create_future()

    def settle(result: list[tuple[int, Any]], error: Exception | None) -> None:
        if found.done():  # the caller stopped waiting (its timeout)
            return
        if error is not None:
            found.set_exception(error)
        else:
            found.set_result(result)

    def work() -> None:
        result: list[tuple[int, Any]] = []
        error: Exception | None = None
        try:
            result = _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM))
        except (OSError, UnicodeError) as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="fos-wake-resolve", daemon=True).start()
    return await found


def _addresses(infos: list[tuple[Any, ...]]) -> list[tuple[int, Any]]:
    return list(dict.fromkeys((int(i[0]), i[4]) for i in infos))


def _datagram_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


async def wake_peers(cfg: Config, kind: HintKind, sender: str = COMMAND_SENDER) -> int:
    """A command's hint to every node (the holder reads its control state at once): resolved within
    RESOLVE_TIMEOUT_S, never an error (a hint is an optimisation). The number of datagrams sent."""
    try:
        return await Waker(cfg, sender, quiet=True).wake_peers(kind)
    except OSError:
        return 0


class _Quiet:
    def debug(self, *_: Any, **__: Any) -> None:
        pass

    warning = debug
