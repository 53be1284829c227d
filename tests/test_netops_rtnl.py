"""The minimal rtnetlink client against the real kernel: read-only dumps of this namespace, and refusals that
change nothing (the binder's tests exercise add/replace/delete in namespaces of their own)."""

from __future__ import annotations

import errno
import socket

import pytest

from netops.rtnl import Rtnl


def test_links_name_the_loopback_with_its_index_and_state() -> None:
    with Rtnl() as rtnl:
        links = {link.name: link for link in rtnl.links()}
    assert links["lo"].index == socket.if_nametoindex("lo")
    assert links["lo"].mac == "00:00:00:00:00:00" and links["lo"].operstate in ("UNKNOWN", "UP")


def test_addresses_filter_by_family_and_interface() -> None:
    lo = socket.if_nametoindex("lo")
    with Rtnl() as rtnl:
        v4 = rtnl.addresses(socket.AF_INET, lo)
        everything = rtnl.addresses()
    loopback = next(a for a in v4 if a.address == "127.0.0.1")
    assert loopback.prefixlen == 8 and loopback.local == "127.0.0.1" and loopback.label == "lo"
    assert all(a.family == socket.AF_INET and a.index == lo for a in v4)
    assert {(a.index, a.address) for a in v4} <= {(a.index, a.address) for a in everything}


def test_a_request_the_kernel_refuses_raises_its_errno() -> None:
    with Rtnl() as rtnl, pytest.raises(OSError) as refused:
        rtnl.set_address(False, 0x7FFFFFF0, "192.0.2.1", 24, 5, proto=222, label="nosuch:fos")
    assert refused.value.errno == errno.ENODEV
