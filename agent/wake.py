"""Wake-up hints: a planned move (a release, a handover, a command's control request) tells the other nodes at
once, by a UDP datagram to their wake port (`cluster.wake_port`, default 8470, 0 = off), instead of letting them
notice at their next poll (a standby reads every heartbeat/2, a holder its control state after its next renewal:
with a listener up, the holder reads only after each renewal and on a hint; without one, also every half
heartbeat, see runner._hold).

A hint is only a hint, never a fact: it carries no lease state, and the receiver reacts exactly as to a poll
falling due early: it reads the database and judges by what it reads there. So a lost, late, forged or replayed
hint is harmless (at worst one extra read; a lost one costs the poll's delay, as without hints); a flood is
harmless too: the extra reads it can cause are limited to one per HINT_INTERVAL_S in all (not per sender: the
sender's name is not authenticated, so anyone can forge every accepted name and multiply a per-name allowance;
a real hint is delayed by at most HINT_INTERVAL_S, never lost). Datagrams that
are malformed, name another cluster, or come from a sender that is not another node of the config (or a command)
are ignored, and logged at debug level only. The sending side is agent/wake_send.py.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from .config import Config

if TYPE_CHECKING:  # not imported at run time: a command (fos switchover) needs no Prometheus client
    from .metrics import Metrics

log = structlog.get_logger("fos.wake")

MAGIC = b"fosW"
VERSION = 1
COMMAND_SENDER = ""  # the sender a fos command names (it is no node): `fos switchover`, `fos enable`, ...
HINT_INTERVAL_S = 0.05  # at most one wake-up in this time, whoever sent: a flood must not hammer the database
_ANY_SENDER = "*"  # the listener's one gate key: names are forgeable, so an allowance per name would multiply
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
        at = self.gate.when(_ANY_SENDER, now)
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
        sock: socket.socket | None = None
        try:  # socket() too: a kernel without IPv6 (ipv6.disable=1) refuses the family itself
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind((host, cfg.wake_port))
            transport, _ = await loop.create_datagram_endpoint(lambda: listener, sock=sock)
            listener.transports.append(transport)
        except OSError as exc:
            if sock is not None:
                sock.close()
            (log.debug if family == socket.AF_INET6 else log.warning)(
                "wake_port_not_bound", port=cfg.wake_port, family=family.name, error=exc.strerror
            )
    if not listener.transports:
        return None
    return listener
