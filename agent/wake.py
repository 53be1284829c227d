"""Wake-up hints: a planned move (a release, a handover, a command's control request) tells the other nodes at
once, by a UDP datagram to their wake port (`cluster.wake_port`, default 8470, 0 = off), instead of letting them
notice at their next poll (a standby reads every heartbeat/2, a holder its control state half a heartbeat after a
renewal).

A hint is only a hint, never a fact: it carries no lease state, and the receiver reacts exactly as to a poll
falling due early: it reads the database and judges by what it reads there. So a lost, late, forged or replayed
hint is harmless (at worst one extra read; a lost one costs the poll's delay, as without hints); a flood is
harmless too: the extra reads it can cause are limited to one per HINT_INTERVAL_S per known sender. Datagrams that
are malformed, name another cluster, or come from a sender that is not another node of the config (or a command)
are ignored, and logged at debug level only. Sending never waits: the datagrams go out from a non-blocking socket
to addresses resolved beforehand (off the loop thread), or, if not yet resolved, from a task of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from .config import Config
from .replication import peer_host

if TYPE_CHECKING:  # not imported at run time: a command (fos switchover) needs no Prometheus client
    from .metrics import Metrics

log = structlog.get_logger("fos.wake")

MAGIC = b"fosW"
VERSION = 1
COMMAND_SENDER = ""  # the sender a fos command names (it is no node): `fos switchover`, `fos enable`, ...
HINT_INTERVAL_S = 0.05  # at most one wake-up per sender in this time: a flood must not hammer the database
RESOLVE_TIMEOUT_S = 0.5  # a command waits at most this long for the peers' names to resolve
RESOLVE_AGAIN_S = 300.0  # an agent re-resolves its peers' names this often (a changed address is learnt)
_HEAD = struct.Struct("!4sBB")  # magic, version, kind


class HintKind(enum.IntEnum):
    RELEASED = 1  # the holder released the lease
    HANDOVER = 2  # the holder handed the lease over to a switchover's target
    CONTROL = 3  # a command wrote a control request (switchover, cancel, maintenance off, enable, disable)


@dataclass(frozen=True)
class Hint:
    cluster: str
    sender: str  # a node name, or COMMAND_SENDER
    kind: HintKind


def encode(hint: Hint) -> bytes:
    """The datagram: magic, version, kind, then the cluster and the sender, each as a length byte and UTF-8."""
    cluster, sender = hint.cluster.encode(), hint.sender.encode()
    return _HEAD.pack(MAGIC, VERSION, hint.kind) + bytes([len(cluster)]) + cluster + bytes([len(sender)]) + sender


def decode(data: bytes) -> Hint | None:
    """The hint in a datagram, or None unless it is exactly one well-formed hint of this version."""
    try:
        magic, version, kind = _HEAD.unpack_from(data)
        n = data[_HEAD.size]
        cluster = data[_HEAD.size + 1 : _HEAD.size + 1 + n]
        rest = data[_HEAD.size + 1 + n :]
        sender = rest[1 : 1 + rest[0]]
        if magic != MAGIC or version != VERSION or len(cluster) != n or len(rest) != 1 + rest[0]:
            return None
        return Hint(cluster.decode(), sender.decode(), HintKind(kind))
    except (struct.error, IndexError, UnicodeDecodeError, ValueError):
        return None


@dataclass
class HintGate:
    """The rate limit: when to act on a hint from `sender` arriving at `now`. The first acts at once; one within
    `interval` of the last acts at the end of that interval (so a real hint is delayed, never lost); further ones
    until then are folded into it (None)."""

    interval: float = HINT_INTERVAL_S
    _last: dict[str, float] = field(default_factory=dict)

    def when(self, sender: str, now: float) -> float | None:
        last = self._last.get(sender)
        if last is None or now >= last + self.interval:
            at = now
        elif last > now:
            return None  # a wake-up is already scheduled for this sender
        else:
            at = last + self.interval
        self._last[sender] = at
        return at


class WakeListener(asyncio.DatagramProtocol):
    """Receives hints: one of `cluster` from a sender in `senders` sets `wake` (through the gate)."""

    def __init__(self, cluster: str, senders: frozenset[str], wake: asyncio.Event, metrics: Metrics) -> None:
        self.cluster, self.senders, self.wake, self.metrics = cluster, senders, wake, metrics
        self.gate = HintGate()
        self.transports: list[asyncio.DatagramTransport] = []

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        hint = decode(data)
        if hint is None or hint.cluster != self.cluster or hint.sender not in self.senders:
            self.metrics.wake_hints_ignored.inc()
            log.debug("wake_hint_ignored", source=str(addr[0]), size=len(data))
            return
        self.metrics.wake_hints_received.inc()
        now = time.monotonic()
        at = self.gate.when(hint.sender, now)
        log.debug("wake_hint", sender=hint.sender, kind=hint.kind.name, source=str(addr[0]), acted=at is not None)
        if at is not None and at <= now:
            self.wake.set()
        elif at is not None:
            asyncio.get_running_loop().call_later(at - now, self.wake.set)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


async def start_listener(cfg: Config, me: str, wake: asyncio.Event, metrics: Metrics) -> WakeListener | None:
    """Listen on the wake port (UDP, IPv4 and IPv6); None when it is 0 or cannot be bound (a warning: hints are
    an optimisation, the agent runs without them)."""
    if cfg.wake_port == 0:
        return None
    senders = frozenset({COMMAND_SENDER} | {n.name for n in cfg.nodes if n.name != me})
    listener = WakeListener(cfg.cluster, senders, wake, metrics)
    loop = asyncio.get_running_loop()
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind((host, cfg.wake_port))
            transport, _ = await loop.create_datagram_endpoint(lambda: listener, sock=sock)
            listener.transports.append(transport)
        except OSError as exc:
            sock.close()
            (log.debug if family == socket.AF_INET6 else log.warning)(
                "wake_port_not_bound", port=cfg.wake_port, family=family.name, error=exc.strerror
            )
    if not listener.transports:
        return None
    return listener


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
        self._spawn(self.resolve())

    def hint(self, kind: HintKind) -> None:
        """Send the hint now (to the resolved hosts) and, in a task, to the others once resolved: never waits."""
        if not self.hosts:
            return
        self._send(kind)
        if any(h not in self._addresses for h in self.hosts) or self._stale():
            self._spawn(self._resolve_then(kind))

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
        await self.resolve()
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
