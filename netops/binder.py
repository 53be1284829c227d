"""The common IP on this machine: is_bound / bind / refresh / unbind / announce, level-triggered and idempotent.

Addresses fos adds carry a marker (the netlink address protocol IFA_PROTO = FOS_ADDR_PROTO, and for IPv4 also
the label "<if>:fos"), so unbind never removes an address an operator configured by hand. A bind can give the
address a finite kernel lifetime (IFA_CACHEINFO, like `ip addr add ... valid_lft N preferred_lft N`): if the
agent is killed or frozen, the kernel itself removes the address when that lifetime runs out.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .arp import arp_probe, send_gratuitous_arp
from .errors import AddressConflict, NetopsError
from .interfaces import Interface, find_interface
from .ndp import ns_probe, send_unsolicited_na

FOS_ADDR_PROTO = 222
# G: how late the kernel may remove an address whose valid lifetime ran out; the agent budgets it (timing.md).
# The kernel's lifetime check (check_lifetime in net/ipv4/devinet.c, addrconf_verify in net/ipv6/addrconf.c) runs
# at once whenever an address of the namespace is added or changed, and then not again for at least
# ADDRCONF_TIMER_FUZZ_MAX = 1 s. An address change just before our expiry therefore delays the removal by up to
# 1 s - HZ/50, plus the timer wheel's granularity (32 ms at HZ=250, 80 ms at HZ=100) and the workqueue's
# scheduling delay; without churn the check is rounded to a whole second when that costs under HZ/4 (0.25 s).
# Measured (kernel 6.18, HZ=250, 2 loaded cores; tests/test_netops_lifetime.py, bench/kernel_lateness.py,
# upper bounds from an rtnetlink monitor): quiet 0.01/0.02/0.40 s (min/median/max) for IPv4 and 0.01/0.02/0.27 s
# for IPv6; with churn -0.01..0.98 s (median 0.50) for IPv4 and -0.01..1.01 s (median 0.49) for IPv6.
# 1.25 s covers the theoretical 1.08 s at HZ=100 with 0.17 s left for scheduling on a busy host.
KERNEL_LATENESS_S = 1.25
FOREVER = 0xFFFFFFFF
IFA_F_NODAD = 0x02

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class AddressBinder(Protocol):
    async def is_bound(self) -> bool: ...

    async def bind(self, lifetime: int | None = None, *, force: bool = False) -> bool: ...

    async def refresh(self, lifetime: int) -> bool: ...

    async def unbind(self) -> bool: ...

    async def announce(self) -> None: ...


@dataclass(frozen=True)
class Announce:
    count: int = 3
    interval: float = 0.2


def validate(interface: str, address: IPInterface) -> Interface:
    """The interface exists, is up, and is on the common IP's subnet; else a NetopsError saying which."""
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


class NetlinkBinder:
    """Owns one address on one interface; touches nothing else."""

    def __init__(
        self, interface: str, address: IPInterface, announce: Announce | None = None, probe_timeout: float = 0.5
    ) -> None:
        self.interface = interface
        self.address = address
        self.ip = str(address.ip)
        self._announce = announce or Announce()
        self.probe_timeout = probe_timeout
        self._label = f"{interface}:fos"[:15] if address.version == 4 else None

    # ---- netlink, run in a worker thread (each call opens its own socket) ----------------------------------

    def _find(self, ipr: IPRoute, index: int) -> Any | None:
        family = 2 if self.address.version == 4 else 10
        for a in ipr.get_addr(family=family, index=index):
            if a.get("IFA_ADDRESS") == self.ip or (self.address.version == 4 and a.get("IFA_LOCAL") == self.ip):
                return a
        return None

    def _ours(self, msg: Any) -> bool:
        if msg.get("IFA_PROTO") == FOS_ADDR_PROTO:
            return True
        return self._label is not None and msg.get("IFA_LABEL") == self._label

    def _state(self) -> tuple[bool, bool]:
        """(present on the interface, present and added by fos)."""
        with IPRoute() as ipr:
            index = self._index(ipr)
            msg = self._find(ipr, index)
            return msg is not None, msg is not None and self._ours(msg)

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.interface)
        if not found:
            raise NetopsError(
                f"interface {self.interface!r} does not exist on this machine: pick one from `fos iflist`"
            )
        return int(found[0])

    def _write(self, command: str, lifetime: int | None) -> None:
        life = FOREVER if lifetime is None else int(lifetime)
        attrs: dict[str, Any] = {
            "index": 0,
            "address": self.ip,
            "prefixlen": self.address.network.prefixlen,
            "IFA_CACHEINFO": {"ifa_preferred": life, "ifa_valid": life, "cstamp": 0, "tstamp": 0},
            "IFA_PROTO": FOS_ADDR_PROTO,
        }
        if self._label:
            attrs["label"] = self._label
        else:
            attrs["IFA_FLAGS"] = IFA_F_NODAD  # we probed already; DAD would leave it unusable for a second
        with IPRoute() as ipr:
            attrs["index"] = self._index(ipr)
            try:
                ipr.addr(command, **attrs)
            except NetlinkError as exc:
                if exc.code == 1:
                    raise NetopsError("changing addresses needs CAP_NET_ADMIN: run fos as root") from None
                raise NetopsError(f"cannot {command} {self.address} on {self.interface}: {exc}") from None

    def _delete(self) -> bool:
        with IPRoute() as ipr:
            index = self._index(ipr)
            msg = self._find(ipr, index)
            if msg is None or not self._ours(msg):
                return False
            try:
                ipr.addr("del", index=index, address=self.ip, prefixlen=msg["prefixlen"])
            except NetlinkError as exc:
                if exc.code == 99:  # EADDRNOTAVAIL: the kernel's lifetime ran out in between
                    return False
                if exc.code == 1:
                    raise NetopsError("changing addresses needs CAP_NET_ADMIN: run fos as root") from None
                raise
            return True

    # ---- the interface ----------------------------------------------------------------------------------

    async def is_bound(self) -> bool:
        """True when the common IP is on the interface and fos added it."""
        return (await asyncio.to_thread(self._state))[1]

    async def bind(self, lifetime: int | None = None, *, force: bool = False) -> bool:
        """Make the common IP present (ours). Returns True if it was added now, False if it already was ours
        (then only its lifetime is refreshed). Probes for another owner first unless `force`."""
        present, ours = await asyncio.to_thread(self._state)
        if ours:
            await asyncio.to_thread(self._write, "replace", lifetime)
            return False
        if present:
            raise NetopsError(
                f"{self.address.ip} is already configured on {self.interface} but not by fos: remove it by hand "
                "(fos never takes over an address it did not add)"
            )
        await asyncio.to_thread(validate, self.interface, self.address)
        if not force:
            mac = await self.probe()
            if mac:
                raise AddressConflict(self.ip, mac)
        await asyncio.to_thread(self._write, "add", lifetime)
        return True

    async def refresh(self, lifetime: int) -> bool:
        """Extend the kernel lifetime of our address; False if it is gone (it is then not re-added: a missing
        address means the kernel fenced us, and only the agent may decide to bind again)."""
        if not (await asyncio.to_thread(self._state))[1]:
            return False
        await asyncio.to_thread(self._write, "replace", lifetime)
        return True

    async def unbind(self) -> bool:
        """Remove the common IP if fos added it; True if it was removed now."""
        return await asyncio.to_thread(self._delete)

    async def announce(self) -> None:
        iface = await asyncio.to_thread(find_interface, self.interface)
        a = self._announce
        try:
            if self.address.version == 4:
                await asyncio.to_thread(send_gratuitous_arp, self.interface, iface.mac, self.ip, a.count, a.interval)
            else:
                await asyncio.to_thread(
                    send_unsolicited_na, self.interface, iface.index, iface.mac, self.ip, a.count, a.interval
                )
        except PermissionError:
            raise NetopsError("announcing the common IP needs CAP_NET_RAW: run fos as root") from None

    async def probe(self, timeout: float | None = None) -> str | None:
        """The MAC of another host answering for the common IP, or None."""
        return await probe_address(self.interface, self.ip, self.probe_timeout if timeout is None else timeout)


async def probe_address(interface: str, ip: str, timeout: float) -> str | None:
    iface = await asyncio.to_thread(find_interface, interface)
    try:
        if ipaddress.ip_address(ip).version == 4:
            return await asyncio.to_thread(arp_probe, interface, iface.mac, ip, timeout)
        return await asyncio.to_thread(ns_probe, interface, iface.index, iface.mac, ip, timeout)
    except PermissionError:
        raise NetopsError("probing for the address needs CAP_NET_RAW: run as root") from None


class NoneBinder:
    """For deployments where the address is managed elsewhere (a load balancer routing by /active)."""

    def __init__(self) -> None:
        self._bound = False

    async def is_bound(self) -> bool:
        return self._bound

    async def bind(self, lifetime: int | None = None, *, force: bool = False) -> bool:
        added, self._bound = not self._bound, True
        return added

    async def refresh(self, lifetime: int) -> bool:
        return self._bound

    async def unbind(self) -> bool:
        removed, self._bound = self._bound, False
        return removed

    async def announce(self) -> None:
        return None
