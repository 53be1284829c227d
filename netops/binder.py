"""The common IP on this machine: is_bound / bind / refresh / unbind / announce / probe_until_clear,
level-triggered and idempotent.

Addresses fos adds carry a marker: the netlink address protocol IFA_PROTO = FOS_ADDR_PROTO (kernels >= 6.3 keep
and report it), and for IPv4 also the label "<first 11 chars of the interface>:fos", which can never equal an
interface name (those cannot contain ':'); a label equal to the interface name, the default for an operator's
address, is never taken as ours. So unbind never removes an address an operator configured by hand. A bind can
give the address a finite kernel lifetime (IFA_CACHEINFO, like `ip addr add ... valid_lft N preferred_lft N`): if
the agent is killed or frozen, the kernel itself removes the address, at most KERNEL_LATENESS_S after that
lifetime ran out.

All blocking work runs in worker threads through netops.settle.settled: a cancelled call returns only after its
thread ended, and every failure is a NetopsError with a one-line message.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import platform
import socket
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .arp import arp_probe, send_gratuitous_arp
from .errors import AddressConflict, DeadlinePassed, NetopsError
from .interfaces import Interface, find_interface
from .ndp import ns_probe, send_unsolicited_na
from .rtnl import Address, Rtnl
from .settle import dump_retrying, settled

FOS_ADDR_PROTO = 222
# G: how late the kernel may remove an address whose valid lifetime ran out; the agent budgets it (timing.md).
# The kernel's lifetime check (check_lifetime in net/ipv4/devinet.c, addrconf_verify in net/ipv6/addrconf.c) runs
# at once whenever an address of the namespace is added or changed, and then not again for at least
# ADDRCONF_TIMER_FUZZ_MAX = 1 s. An address change just before our expiry therefore delays the removal by up to
# 1 s - HZ/50, plus the timer wheel's granularity (32 ms at HZ=250, 80 ms at HZ=100) and the workqueue's
# scheduling delay; without churn the check is rounded to a whole second when that costs under HZ/4 (0.25 s).
# Measured by bench/kernel_lateness.py (kernel 6.18, HZ=250, 2 busy cores, 25 repetitions each; upper bounds from
# an rtnetlink monitor), min/median/max: IPv4 quiet 0.011/0.023/0.427 s, with churn 0.047/0.504/0.987 s; IPv6
# quiet 0.005/0.017/0.464 s, with churn -0.010/0.468/0.984 s. Worst seen in all runs: 1.008 s (IPv6, churn 27 ms
# before expiry). In CI, with the whole suite running (namespaces of earlier tests still being torn down by the
# kernel, which holds the RTNL lock meanwhile), one removal came 1.363 s after the address was written: the kworker
# and the RTNL lock can add a third of a second or more to the kernel's own bound (1 s + 80 ms at HZ=100). 2 s
# leaves 0.9 s for that; tests/test_netops_lifetime.py checks it under randomized churn.
KERNEL_LATENESS_S = 2.0
FOREVER = 0xFFFFFFFF
IFA_F_NODAD = 0x02
DEFAULT_PROBE_TIMEOUT_S = 0.2  # the same as cluster.probe_timeout's default in agent/config.py

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class AddressBinder(Protocol):
    """The common IP on this node. Every method is idempotent and raises only NetopsError (AddressConflict when
    another host answers for the address). Every method is safe to cancel: a cancelled call returns (raising
    CancelledError) only after its netlink or raw-socket work ended, so the address is then in a settled state
    and no packet is sent any more on that call's behalf.

    `written_lifetime` is the kernel lifetime (whole seconds) of the last successful bind or refresh as it was
    written, after any cut by `not_after`; None for no limit, or before the first write."""

    written_lifetime: int | None

    async def is_bound(self) -> bool:
        """True when the common IP is on the interface and fos added it (an operator's address: False)."""
        ...

    async def bind(self, lifetime: int | None = None, *, force: bool = False, not_after: float | None = None) -> bool:
        """Make the common IP present and ours, with a kernel lifetime of `lifetime` whole seconds (None: no
        limit). True if it was added now; False if it was already ours (its lifetime is then set to `lifetime`).
        With `not_after` (a CLOCK_BOOTTIME instant: the agent's fence deadline) the lifetime is cut, in the
        worker thread right before the netlink write, so that the kernel removes the address by `not_after`
        (write time + lifetime + KERNEL_LATENESS_S); if not even 1 s fits any more, nothing is written and
        DeadlinePassed is raised: a caller delayed or frozen on the way never adds or extends a stale address.
        After every write (a shortening rewrite too) the room is checked again: a write that landed late is
        rewritten shorter, or, when under 1 s fits, the address is deleted and DeadlinePassed raised.
        Unless `force`, first probe once for another owner and raise AddressConflict if one answers. With
        `force=True` it never probes, so nothing slow lies between the call and the netlink write: the caller
        probes first (probe_until_clear) and computes `lifetime` right before calling. Raises NetopsError if the
        interface is missing or down, the address is outside its subnets, or someone else configured it."""
        ...

    async def refresh(self, lifetime: int, *, not_after: float | None = None) -> bool:
        """Set the kernel lifetime of our address to `lifetime` seconds from now. False, and nothing added, when
        the address is not there (the kernel's lifetime ran out: only the agent may decide to bind again).
        `not_after` as for bind."""
        ...

    async def unbind(self) -> bool:
        """Remove the common IP if fos added it; True if it was removed now, False if absent or not ours."""
        ...

    async def announce(self) -> None:
        """Tell the neighbours the common IP is here now: gratuitous ARP (IPv4) or unsolicited neighbour
        advertisements (IPv6), a few times apart. A cancel stops it before its next packet."""
        ...

    async def probe_until_clear(self, window: float) -> str | None:
        """Probe for another host answering for the common IP, again and again (each round lasts the probe
        timeout), until a round sees no other owner (-> None) or `window` seconds have passed (-> the MAC of the
        last owner seen). Right after taking over an expired lease the old holder's address may remain for up
        to KERNEL_LATENESS_S: the agent calls probe_until_clear(KERNEL_LATENESS_S) instead of a single probe."""
        ...


@dataclass(frozen=True)
class Announce:
    count: int = 3
    interval: float = 0.2


def kernel_marks_addresses(release: str) -> bool:
    """True if this kernel keeps IFA_PROTO on addresses (Linux 6.3 and later). Without it an IPv6 address fos
    added cannot be told from an operator's (IPv4 still has its label), so fos could neither refresh nor remove it."""
    parts = release.split(".")
    try:
        major, minor = int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (6, 3)


def validate(interface: str, address: IPInterface) -> Interface:
    """The interface exists, is up, and is on the common IP's subnet (and, for IPv6, the kernel can mark fos's
    address); else a NetopsError saying which."""
    if address.version == 6 and not kernel_marks_addresses(platform.release()):
        raise NetopsError(
            f"an IPv6 common IP needs Linux 6.3 or later (this is {platform.release()}): older kernels drop the "
            "marker that tells fos's address from an operator's; use an IPv4 common IP or a newer kernel"
        )
    iface = find_interface(interface)
    if not iface.usable:
        raise NetopsError(
            f"interface {interface} is {iface.state}: bring it up, or choose the NIC of the network that is UP "
            "(`fos iflist`)"
        )
    own = [n for n in iface.networks() if n.version == address.version and address.ip in n]
    if not own:
        nets = ", ".join(str(n) for n in iface.networks() if n.version == address.version) or "none"
        raise NetopsError(
            f"common IP {address} is not in a subnet of {interface} (its IPv{address.version} subnets: {nets}): "
            "choose the NIC on the common IP's network, or fix cluster.common_ip"
        )
    return iface


def fos_label(interface: str) -> str:
    """The IPv4 label of addresses fos adds: at most 15 characters (IFNAMSIZ - 1), and never equal to an
    interface name, since those cannot contain ':'."""
    return f"{interface[:11]}:fos"


class NetlinkBinder:
    """Owns one address on one interface; touches nothing else. Implements AddressBinder (see its contract).
    `probe_timeout` is how long one conflict probe listens for another owner; its default is the config's
    (cluster.probe_timeout = 0.2 s)."""

    def __init__(
        self,
        interface: str,
        address: IPInterface,
        announce: Announce | None = None,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT_S,
    ) -> None:
        self.interface = interface
        self.address = address
        self.ip = str(address.ip)
        self._announce = announce or Announce()
        self.probe_timeout = probe_timeout
        self._label = fos_label(interface) if address.version == 4 else None
        self.written_lifetime: int | None = None

    # ---- netlink, run in a worker thread (each call opens its own socket) ----------------------------------

    def _find(self, ipr: Rtnl, index: int) -> Address | None:
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        for a in dump_retrying(lambda: ipr.addresses(family, index)):
            if a.address == self.ip or (self.address.version == 4 and a.local == self.ip):
                return a
        return None

    def _ours(self, msg: Address) -> bool:
        proto = msg.proto
        if proto is not None:  # kernels >= 6.3 report a non-zero protocol: the primary marker
            return proto == FOS_ADDR_PROTO
        label = msg.label
        # Older kernels drop IFA_PROTO: fall back to the label, but never to one equal to the interface name,
        # which is what the operator's own addresses carry.
        return self._label is not None and label == self._label and label != self.interface

    def _state(self) -> tuple[bool, bool]:
        """(present on the interface, present and added by fos)."""
        with Rtnl() as ipr:
            msg = self._find(ipr, self._index(ipr))
            return msg is not None, msg is not None and self._ours(msg)

    def _replace_if_ours(self, lifetime: int | None, not_after: float | None) -> tuple[bool, bool]:
        """(present, ours) as _state; when ours, its lifetime is set at once, on the same netlink socket: the
        holder's every renewal comes here, and one socket and one dump instead of two halve its netlink work."""
        with Rtnl() as ipr:
            index = self._index(ipr)
            msg = self._find(ipr, index)
            ours = msg is not None and self._ours(msg)
            if ours:
                self._write_on(ipr, index, "replace", lifetime, not_after)
            return msg is not None, ours

    def _index(self, ipr: Rtnl) -> int:
        # if_nametoindex is one ioctl; but it only says "no" (also when it could not open its socket): then a
        # netlink get of the link by name tells what is wrong (a get, not a dump: never interrupted by churn).
        try:
            return socket.if_nametoindex(self.interface)
        except OSError:
            pass
        try:
            return ipr.link(name=self.interface).index
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                raise
        raise NetopsError(f"interface {self.interface!r} does not exist on this machine: pick one from `fos iflist`")

    def _write(self, command: str, lifetime: int | None, not_after: float | None = None) -> None:
        with Rtnl() as ipr:
            self._write_on(ipr, self._index(ipr), command, lifetime, not_after)

    def _write_on(self, ipr: Rtnl, index: int, command: str, lifetime: int | None, not_after: float | None) -> None:
        life = FOREVER if lifetime is None else int(lifetime)
        prefixlen = self.address.network.prefixlen
        # IPv6: no DAD, we probed already (DAD would leave the address unusable for a second); IPv4 has the label.
        flags = 0 if self._label else IFA_F_NODAD

        def write(replace: bool, seconds: int) -> None:
            ipr.set_address(
                replace, index, self.ip, prefixlen, seconds, proto=FOS_ADDR_PROTO, label=self._label, flags=flags
            )

        if not_after is not None:
            # The last moment before the write: whatever delayed us (a freeze, a suspend, the scheduler),
            # the address must still be gone by not_after.
            room = not_after - time.clock_gettime(time.CLOCK_BOOTTIME) - KERNEL_LATENESS_S
            if room < 1:
                raise DeadlinePassed(1 - room)
            life = min(life, math.floor(room))
        write(command == "replace", life)
        while not_after is not None:
            # A freeze between the cut and the write counts the lifetime from the thaw: after every write (the
            # rewrites below too) check again, and shorten or remove the address if it could now outlive
            # not_after. This ends: each rewrite is shorter than the last, and below 1 s the address goes.
            room = not_after - time.clock_gettime(time.CLOCK_BOOTTIME) - KERNEL_LATENESS_S
            if room >= life:
                break
            if room < 1:
                ipr.delete_address(index, self.ip, prefixlen)
                self.written_lifetime = None
                raise DeadlinePassed(1 - room)
            life = math.floor(room)
            write(True, life)
        self.written_lifetime = None if life == FOREVER else life

    def _delete(self) -> bool:
        with Rtnl() as ipr:
            index = self._index(ipr)
            msg = self._find(ipr, index)
            if msg is None or not self._ours(msg):
                return False
            try:
                ipr.delete_address(index, self.ip, msg.prefixlen)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # the kernel's lifetime ran out in between
                    return False
                raise
            return True

    # ---- the interface (AddressBinder) --------------------------------------------------------------------

    def _what(self, doing: str) -> str:
        return f"{doing} {self.address} on {self.interface}"

    async def is_bound(self) -> bool:
        return (await settled(self._state, self._what("read")))[1]

    async def bind(self, lifetime: int | None = None, *, force: bool = False, not_after: float | None = None) -> bool:
        present, ours = await settled(
            lambda: self._replace_if_ours(lifetime, not_after), self._what("set the lifetime of")
        )
        if ours:
            return False
        if present:
            raise NetopsError(
                f"{self.address.ip} is already configured on {self.interface} but not by fos: remove it by hand "
                "(fos never takes over an address it did not add)"
            )
        await settled(lambda: validate(self.interface, self.address), self._what("check"))
        if not force:
            mac = await self.probe()
            if mac:
                raise AddressConflict(self.ip, mac)
        await settled(lambda: self._write("add", lifetime, not_after), self._what("add"))
        return True

    async def refresh(self, lifetime: int, *, not_after: float | None = None) -> bool:
        _, ours = await settled(lambda: self._replace_if_ours(lifetime, not_after), self._what("set the lifetime of"))
        return ours

    async def unbind(self) -> bool:
        return await settled(self._delete, self._what("remove"))

    async def announce(self) -> None:
        iface = await settled(lambda: find_interface(self.interface), f"look up {self.interface}")
        a, stop = self._announce, threading.Event()
        if self.address.version == 4:
            await settled(
                lambda: send_gratuitous_arp(self.interface, iface.mac, self.ip, a.count, a.interval, stop),
                f"announce {self.ip} on {self.interface}",
                stop,
            )
        else:
            await settled(
                lambda: send_unsolicited_na(self.interface, iface.index, iface.mac, self.ip, a.count, a.interval, stop),
                f"announce {self.ip} on {self.interface}",
                stop,
            )

    async def probe(self, timeout: float | None = None) -> str | None:
        """One conflict probe (`timeout`, default probe_timeout): the MAC of another host answering for the
        common IP, or None."""
        return await probe_address(self.interface, self.ip, self.probe_timeout if timeout is None else timeout)

    async def probe_until_clear(self, window: float) -> str | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + window
        while True:
            started = loop.time()
            mac = await self.probe()
            if mac is None or loop.time() >= end:
                return mac
            # The old owner answered at once: let this round last its full timeout before asking again.
            await asyncio.sleep(max(0.0, min(started + self.probe_timeout, end) - loop.time()))


async def probe_address(interface: str, ip: str, timeout: float) -> str | None:
    """The MAC of another host answering for `ip` on `interface` within `timeout`, or None."""
    iface = await settled(lambda: find_interface(interface), f"look up {interface}")
    stop = threading.Event()
    what = f"probe for {ip} on {interface}"
    if ipaddress.ip_address(ip).version == 4:
        return await settled(lambda: arp_probe(interface, iface.mac, ip, timeout, stop=stop), what, stop)
    return await settled(lambda: ns_probe(interface, iface.index, iface.mac, ip, timeout, stop=stop), what, stop)


class NoneBinder:
    """For deployments where the address is managed elsewhere (a load balancer routing by /active): remembers
    whether it is "bound" and touches nothing; nobody else ever owns its address."""

    def __init__(self) -> None:
        self._bound = False
        self.written_lifetime: int | None = None

    async def is_bound(self) -> bool:
        return self._bound

    async def bind(self, lifetime: int | None = None, *, force: bool = False, not_after: float | None = None) -> bool:
        added, self._bound = not self._bound, True
        return added

    async def refresh(self, lifetime: int, *, not_after: float | None = None) -> bool:
        return self._bound

    async def unbind(self) -> bool:
        removed, self._bound = self._bound, False
        return removed

    async def announce(self) -> None:
        return None

    async def probe_until_clear(self, window: float) -> str | None:
        return None
