"""Network interfaces as the kernel reports them over netlink (netops.rtnl): never by parsing `ip` output."""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from .errors import NetopsError
from .rtnl import Link, Rtnl
from .settle import describe, dump_retrying


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: str
    state: str  # the kernel's operstate: UP, DOWN, UNKNOWN (loopback, some virtual NICs), LOWERLAYERDOWN ...
    admin_up: bool
    addresses: list[str] = field(default_factory=list)  # "a.b.c.d/prefix" and IPv6 likewise

    @property
    def usable(self) -> bool:
        """Up for carrying the common IP: administratively up with a live link."""
        return self.admin_up and self.state in ("UP", "UNKNOWN")

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_interface(a).network for a in self.addresses]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "mac": self.mac,
            "state": self.state,
            "addresses": list(self.addresses),
        }


IFF_UP = 0x1


def _interface(link: Link, addresses: list[str]) -> Interface:
    return Interface(
        name=link.name,
        index=link.index,
        mac=link.mac,
        state=link.operstate,
        admin_up=bool(link.flags & IFF_UP),
        addresses=addresses,
    )


def list_interfaces(ipr: Rtnl | None = None) -> list[Interface]:
    """Every interface with its addresses; NetopsError (one line) if the kernel cannot be asked."""
    try:
        return _list(ipr)
    except OSError as exc:
        raise describe(exc, "list the network interfaces") from exc


def _list(ipr: Rtnl | None) -> list[Interface]:
    own = ipr is None
    rtnl = ipr or Rtnl()
    try:
        links = dump_retrying(rtnl.links)
        out = []
        if rtnl.strict:
            # One small dump per interface and family, each retried on its own: changes on a crowded interface
            # interrupt only that interface's dump, not the listing of all of them.
            for link in links:
                try:
                    out.append(_interface(link, _addresses_of(rtnl, link.index)))
                except OSError as exc:
                    if exc.errno != errno.ENODEV:
                        raise  # ENODEV: the link went away after the link dump; so it is not listed
        else:  # the kernel ignores a dump's filters: one dump of the whole host
            addrs: dict[int, list[str]] = {}
            for a in dump_retrying(rtnl.addresses):
                addrs.setdefault(a.index, []).append(f"{a.address}/{a.prefixlen}")
            out = [_interface(link, addrs.get(link.index, [])) for link in links]
        return sorted(out, key=lambda i: i.index)
    finally:
        if own:
            rtnl.close()


def _addresses_of(rtnl: Rtnl, index: int) -> list[str]:
    """The IPv4 and IPv6 addresses of the interface `index`, "a.b.c.d/prefix", each family's dump retried."""
    addrs: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        dump = functools.partial(rtnl.addresses, family, index)
        addrs += (f"{a.address}/{a.prefixlen}" for a in dump_retrying(dump))
    return addrs


def _missing(name: str) -> NetopsError:
    return NetopsError(f"interface {name!r} does not exist on this machine: pick one from `fos iflist`")


def find_interface(name: str, ipr: Rtnl | None = None) -> Interface:
    """The interface `name` with its addresses; NetopsError (one line) if it does not exist or the kernel cannot
    be asked. It asks for that one link and its addresses only (a get and per-interface dumps), so other
    interfaces' addresses, however many and however busy, neither slow it down nor interrupt its dumps."""
    own = ipr is None
    try:
        rtnl = ipr or Rtnl()
    except OSError as exc:
        raise describe(exc, f"look up the interface {name}") from exc
    try:
        try:
            link = rtnl.link(name=name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise _missing(name) from None
            raise
        return _interface(link, _addresses_of(rtnl, link.index))
    except OSError as exc:
        raise describe(exc, f"look up the interface {name}") from exc
    finally:
        if own:
            rtnl.close()


def format_table(interfaces: list[Interface]) -> str:
    rows = [("NAME", "STATE", "MAC", "ADDRESSES")]
    rows += [(i.name, i.state, i.mac, ", ".join(i.addresses) or "-") for i in interfaces]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)
