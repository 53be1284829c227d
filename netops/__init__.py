"""The common IP: list NICs, bind/unbind the address with a kernel lifetime, announce it, probe for conflicts."""

from .binder import (
    FOS_ADDR_PROTO,
    KERNEL_LATENESS_S,
    AddressBinder,
    Announce,
    NetlinkBinder,
    NoneBinder,
    kernel_marks_addresses,
    probe_address,
    validate,
)
from .errors import AddressConflict, DeadlinePassed, NetopsError
from .interfaces import Interface, find_interface, format_table, list_interfaces

__all__ = [
    "FOS_ADDR_PROTO",
    "KERNEL_LATENESS_S",
    "AddressBinder",
    "AddressConflict",
    "Announce",
    "DeadlinePassed",
    "Interface",
    "NetlinkBinder",
    "NetopsError",
    "NoneBinder",
    "find_interface",
    "format_table",
    "kernel_marks_addresses",
    "list_interfaces",
    "probe_address",
    "validate",
]
