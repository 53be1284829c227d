"""NIC listing through netlink, checked inside a test host whose interfaces we know exactly."""

from __future__ import annotations

import errno
import json
import sys

import pytest

from netops import Interface, NetopsError, find_interface, list_interfaces
from netops.rtnl import Address, DumpInterrupted, Rtnl
from tests.support.netns import Lan
from tests.test_netops_rtnl import CHURN, CROWD, crowd


def test_iflist_json_inside_a_namespace_lists_exactly_its_interfaces(lan: Lan) -> None:
    m1 = lan.add_host("m1")
    out = m1.run(sys.executable, "-m", "agent", "iflist", "--json")
    doc = json.loads(out.stdout)
    assert sorted(i["name"] for i in doc) == ["eth0", "lo"]
    eth0 = next(i for i in doc if i["name"] == "eth0")
    assert eth0["mac"] == m1.mac and eth0["state"] == "UP"
    assert f"{m1.ip}/24" in eth0["addresses"] and f"{m1.ip6}/64" in eth0["addresses"]
    assert set(eth0) == {"name", "index", "mac", "state", "addresses"}


def test_iflist_table_shows_state_mac_and_addresses(lan: Lan) -> None:
    m1 = lan.add_host("m1")
    m1.run("ip", "link", "set", "eth0", "down")
    lines = m1.run(sys.executable, "-m", "agent", "iflist").stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "MAC", "ADDRESSES"]
    eth0 = next(line for line in lines if line.startswith("eth0"))
    assert "DOWN" in eth0 and m1.mac in eth0 and f"{m1.ip}/24" in eth0


def test_usable_needs_admin_up_and_a_live_link() -> None:
    assert Interface("e", 2, "", "UP", True).usable
    assert Interface("lo", 1, "", "UNKNOWN", True).usable
    assert not Interface("e", 2, "", "LOWERLAYERDOWN", True).usable
    assert not Interface("e", 2, "", "DOWN", False).usable


class ChurnedRtnl(Rtnl):
    """A real netlink socket whose address dumps are always interrupted, as on a host whose addresses keep
    changing while they are read (see test_netops_rtnl.py for the real thing)."""

    def addresses(self, family: int = 0, index: int | None = None) -> list[Address]:
        raise DumpInterrupted


def test_address_dumps_interrupted_every_time_are_a_one_line_netops_error_saying_to_retry() -> None:
    with ChurnedRtnl() as rtnl:
        with pytest.raises(NetopsError) as listed:
            list_interfaces(rtnl)
        with pytest.raises(NetopsError) as found:
            find_interface("lo", rtnl)
    for caught in (listed, found):
        assert "kept changing; retry" in str(caught.value) and "\n" not in str(caught.value)


def test_without_strict_checking_the_listing_is_the_same() -> None:
    with Rtnl() as strict, Rtnl() as lenient:
        lenient.strict = False  # as on a kernel before 4.20: one whole-host dump
        # lo only: other interfaces of this (shared) namespace may change between the two listings
        assert [i for i in list_interfaces(lenient) if i.name == "lo"] == [
            i for i in list_interfaces(strict) if i.name == "lo"
        ]


def test_an_interrupted_dump_is_an_oserror_with_errno_eagain() -> None:
    assert isinstance(DumpInterrupted(), OSError) and DumpInterrupted().errno == errno.EAGAIN


# Inside the test host: one thread adds and deletes an address on d1 as fast as netlink allows while the
# interfaces are listed 30 times; prints the failures and how many addresses d1 had in each listing.
CHURNED_LISTINGS = (
    CHURN
    + """
import json
from netops import NetopsError, list_interfaces
t = threading.Thread(target=churn)
t.start()
failures, crowd = [], []
try:
    for _ in range(30):
        try:
            crowd.append(len(next(i for i in list_interfaces() if i.name == "d1").addresses))
        except NetopsError as exc:
            failures.append(str(exc))
finally:
    stop.set()
    t.join()
print(json.dumps({"failures": failures, "crowd": crowd}))
"""
)


def test_listing_succeeds_on_a_host_with_thousands_of_addresses_changing(lan: Lan) -> None:
    m1 = lan.add_host("m1")
    crowd(m1)
    out = m1.run(sys.executable, "-c", CHURNED_LISTINGS, timeout=60)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert not doc["failures"], f"{len(doc['failures'])} of 30 listings failed, e.g. {doc['failures'][0]}"
    assert all(n >= CROWD for n in doc["crowd"]), f"d1 listed with fewer than its {CROWD} addresses: {doc['crowd']}"
