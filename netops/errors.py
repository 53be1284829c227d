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
