"""Errors of the common-IP operations; messages are one line and say what to do."""

from __future__ import annotations


class NetopsError(Exception):
    """The address cannot be managed as asked (missing interface, wrong subnet, not ours, no privilege)."""


class AddressConflict(NetopsError):
    """Another host answers for the common IP."""

    def __init__(self, address: str, mac: str) -> None:
        super().__init__(f"another host ({mac}) answers for {address}: it must not be bound here too")
        self.address = address
        self.mac = mac


class DeadlinePassed(NetopsError):
    """A write was skipped: at the moment of the netlink write not even a 1 s lifetime fitted before the deadline
    the caller gave (it was delayed or frozen on the way). Nothing was added or extended; or, found only after
    a write (which then landed too late), the address was deleted."""

    def __init__(self, late_by: float) -> None:
        super().__init__(f"the common IP was not written: less than 1 s of lifetime was left ({late_by:.3f}s short)")
        self.late_by = late_by
