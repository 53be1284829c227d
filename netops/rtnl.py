"""A minimal rtnetlink client: exactly the requests netops makes — dump the links, get one link, dump the
addresses (of one interface), add, replace or delete one address — on a plain AF_NETLINK socket, blocking (run
it in a worker thread).

Why not pyroute2, which did this before: importing any part of it runs its package __init__, which loads its whole
library (IPDB, NDB with sqlite3, conntrack, nftables, multiprocessing, unittest: about 190 modules), about 10 MB
of each agent's 45 MB budget; and its sync API builds an event loop per socket and decodes every message into
objects, a third of an idle holder's CPU. The wire format below is the kernel's (include/uapi/linux/netlink.h,
rtnetlink.h, if_addr.h, if_link.h) and has not changed in decades.

Failures are OSError with the kernel's errno (EPERM, ENODEV, EEXIST, EADDRNOTAVAIL ...), DumpInterrupted (EAGAIN)
when a concurrent change invalidated a dump (the caller repeats it), EMSGSIZE for an answer larger than the
receive buffer, TimeoutError when no answer came within the socket's timeout. Messages that do not come from the
kernel (port 0) are ignored.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 18, 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_CACHEINFO, IFA_FLAGS, IFA_PROTO = 1, 2, 3, 6, 8, 11
IFLA_ADDRESS, IFLA_IFNAME, IFLA_OPERSTATE, IFLA_EXT_MASK = 1, 3, 16, 29
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFNAMSIZ = 16
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
_RTATTR = struct.Struct("=HH")  # length, type
_CACHEINFO = struct.Struct("=IIII")  # preferred, valid, cstamp, tstamp
_RECV_BUFFER = 1 << 16  # the kernel's dump messages are at most 32 KiB
# No answer within this is a failure, never a wait forever. A write cannot land after it: the kernel carries out
# a request inside send() (waiting there for the RTNL lock, which no socket timeout interrupts); what the timeout
# bounds is the wait for an answer that never comes (a kernel bug; an answer lost to a full receive buffer
# raises ENOBUFS at once).
TIMEOUT_S = 5.0


class DumpInterrupted(OSError):
    """The kernel flagged the dump as inconsistent (a change happened meanwhile): repeat it. An OSError (EAGAIN),
    so that callers who report OSErrors as one-line errors report this one too, once its retries ran out."""

    def __init__(self) -> None:
        super().__init__(errno.EAGAIN, "the kernel's address table kept changing; retry")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]  # without NLA_F_NESTED/BYTEORDER
        offset += _align(length)
    return found


def _attr(kind: int, value: bytes) -> bytes:
    raw = _RTATTR.pack(_RTATTR.size + len(value), kind) + value
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True)
class Address:
    """One RTM_NEWADDR message of a dump."""

    family: int
    prefixlen: int
    index: int
    attrs: dict[int, bytes]

    def _ip(self, kind: int) -> str | None:
        raw = self.attrs.get(kind)
        return None if raw is None else socket.inet_ntop(self.family, raw)

    @property
    def address(self) -> str | None:
        return self._ip(IFA_ADDRESS)

    @property
    def local(self) -> str | None:
        return self._ip(IFA_LOCAL)

    @property
    def label(self) -> str | None:
        return _text(self.attrs.get(IFA_LABEL))

    @property
    def proto(self) -> int | None:
        """IFA_PROTO (kernels >= 6.3 keep and report it), None when absent."""
        raw = self.attrs.get(IFA_PROTO)
        return raw[0] if raw else None


@dataclass(frozen=True)
class Link:
    """One RTM_NEWLINK message of a dump."""

    index: int
    flags: int
    attrs: dict[int, bytes]

    @property
    def name(self) -> str:
        return _text(self.attrs.get(IFLA_IFNAME)) or ""

    @property
    def mac(self) -> str:
        return ":".join(f"{b:02x}" for b in self.attrs.get(IFLA_ADDRESS, b""))

    @property
    def operstate(self) -> str:
        raw = self.attrs.get(IFLA_OPERSTATE)
        return OPERSTATES[raw[0]] if raw and raw[0] < len(OPERSTATES) else "UNKNOWN"


def _link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    return Link(index, flags, _attrs(payload, _IFINFOMSG.size))


class Rtnl:
    """One NETLINK_ROUTE socket; not thread-safe (open one per worker call, as netops does)."""

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        """`timeout`: how long one wait for the kernel's answer may last before TimeoutError (an OSError)."""
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)
        self._seq = 0
        # Strict checking (Linux >= 4.20) makes the kernel honour the filters of a dump request (ifa_index, the
        # family), so an address dump covers one interface, not the whole host: on a host with thousands of
        # addresses a whole-host dump spans many messages, and any change anywhere meanwhile interrupts it
        # (NLM_F_DUMP_INTR) again and again. Older kernels ignore the filters; addresses() filters as well.
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self.strict = True
        except OSError:
            self.strict = False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the payloads of the answers (a dump's messages; nothing for an ACK)."""
        self._seq += 1
        seq = self._seq
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body)
        out: list[bytes] = []
        interrupted = False
        while True:
            data, _, msg_flags, (sender, _) = self._sock.recvmsg(_RECV_BUFFER)
            if sender != 0:
                continue  # not from the kernel: another process can send to this socket's port
            if msg_flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, f"a netlink answer was larger than {_RECV_BUFFER} bytes")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, mflags, mseq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                payload = data[offset + _HEADER.size : offset + length]
                offset += _align(length)
                if mseq != seq:
                    continue  # an answer to an earlier request this socket gave up on
                interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                if mtype in (NLMSG_ERROR, NLMSG_DONE):
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code > 0:
                        raise OSError(code, os.strerror(code))
                    if interrupted:
                        raise DumpInterrupted
                    return out
                out.append(payload)
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out

    def links(self) -> list[Link]:
        """Every link (interface) of this network namespace."""
        payloads = self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFOMSG.pack(0, 0, 0, 0, 0))
        return [_link(p) for p in payloads]

    def link(self, index: int = 0, name: str | None = None) -> Link:
        """The one link with interface index `index`, or (index 0) named `name`: a get, not a dump, so it is
        never interrupted by changes elsewhere. OSError ENODEV if there is no such link."""
        if name is not None and not 0 < len(name.encode()) < IFNAMSIZ:
            raise OSError(errno.ENODEV, f"no interface can be named {name!r}")  # the kernel would say EINVAL
        body = _IFINFOMSG.pack(0, 0, index, 0, 0) + _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        if name is not None:
            body += _attr(IFLA_IFNAME, name.encode() + b"\0")
        payloads = self._request(RTM_GETLINK, 0, body)
        if not payloads:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return _link(payloads[0])

    def addresses(self, family: int = 0, index: int | None = None) -> list[Address]:
        """Every IPv4 and IPv6 address (`family` 0) or those of `family` (AF_INET, AF_INET6), on the interface
        `index` if given. With strict checking the kernel sends only those (a dump that stays small however many
        addresses the host has). Other families (MCTP, Phonet ...) are never returned: their addresses are not
        IP addresses."""
        if not family:
            return self.addresses(socket.AF_INET, index) + self.addresses(socket.AF_INET6, index)
        wanted = index if index is not None and self.strict else 0
        payloads = self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, wanted))
        found = []
        for p in payloads:
            fam, prefixlen, _, _, idx = _IFADDRMSG.unpack_from(p)
            # kernels without strict checking ignore the request's filters: filter here as well
            if fam not in IP_FAMILIES or fam != family or (index is not None and idx != index):
                continue
            found.append(Address(fam, prefixlen, idx, _attrs(p, _IFADDRMSG.size)))
        return found

    def set_address(
        self,
        replace: bool,
        index: int,
        ip: str,
        prefixlen: int,
        lifetime: int,
        *,
        proto: int,
        label: str | None = None,
        flags: int = 0,
    ) -> None:
        """Add (replace=False: EEXIST if present) or replace `ip`/`prefixlen` on `index`, valid and preferred for
        `lifetime` seconds (0xFFFFFFFF: forever), marked with IFA_PROTO `proto`, and for IPv4 IFA_LOCAL and the
        label, as `ip addr add/replace ... valid_lft L preferred_lft L proto P label X` does."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        raw = socket.inet_pton(family, ip)
        body = _IFADDRMSG.pack(family, prefixlen, flags & 0xFF, 0, index) + _attr(IFA_ADDRESS, raw)
        if family == socket.AF_INET:
            body += _attr(IFA_LOCAL, raw)
        if label is not None:
            body += _attr(IFA_LABEL, label.encode() + b"\0")
        body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime, lifetime, 0, 0))
        body += _attr(IFA_PROTO, bytes([proto]))
        if flags:
            body += _attr(IFA_FLAGS, struct.pack("=I", flags))
        how = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        self._request(RTM_NEWADDR, how | NLM_F_ACK, body)

    def delete_address(self, index: int, ip: str, prefixlen: int) -> None:
        """Remove `ip`/`prefixlen` from `index` (EADDRNOTAVAIL if it is not there)."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        raw = socket.inet_pton(family, ip)
        body = _IFADDRMSG.pack(family, prefixlen, 0, 0, index) + _attr(IFA_ADDRESS, raw)
        if family == socket.AF_INET:
            body += _attr(IFA_LOCAL, raw)
        self._request(RTM_DELADDR, NLM_F_ACK, body)
