"""The minimal rtnetlink client against the real kernel: read-only dumps of this namespace, and refusals that
change nothing (the binder's tests exercise add/replace/delete in namespaces of their own)."""

from __future__ import annotations

import errno
import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from netops import rtnl as rtnl_module
from netops.rtnl import Rtnl
from tests.support.netns import Host, Lan
from tests.test_netops_binder import VIP


def test_links_name_the_loopback_with_its_index_and_state() -> None:
    with Rtnl() as rtnl:
        links = {link.name: link for link in rtnl.links()}
    assert links["lo"].index == socket.if_nametoindex("lo")
    assert links["lo"].mac == "00:00:00:00:00:00" and links["lo"].operstate in ("UNKNOWN", "UP")


def test_a_link_is_got_by_index_or_by_name_and_a_missing_one_is_enodev() -> None:
    lo = socket.if_nametoindex("lo")
    with Rtnl() as rtnl:
        assert rtnl.link(lo).name == "lo" and rtnl.link(name="lo").index == lo
        for name in ("fos-no-such-if", "x" * 16, ""):
            with pytest.raises(OSError) as missing:
                rtnl.link(name=name)
            assert missing.value.errno == errno.ENODEV


def test_addresses_filter_by_family_and_interface() -> None:
    lo = socket.if_nametoindex("lo")
    with Rtnl() as rtnl:
        v4 = rtnl.addresses(socket.AF_INET, lo)
        everything = rtnl.addresses()
    loopback = next(a for a in v4 if a.address == "127.0.0.1")
    assert loopback.prefixlen == 8 and loopback.local == "127.0.0.1" and loopback.label == "lo"
    assert all(a.family == socket.AF_INET and a.index == lo for a in v4)
    assert {(a.index, a.address) for a in v4} <= {(a.index, a.address) for a in everything}


def test_without_strict_checking_the_dump_is_filtered_here_as_well() -> None:
    lo = socket.if_nametoindex("lo")
    with Rtnl() as strict, Rtnl() as lenient:
        lenient.strict = False  # as on a kernel before 4.20: the request then asks for the whole host
        assert strict.strict
        assert [(a.index, a.address) for a in lenient.addresses(socket.AF_INET, lo)] == [
            (a.index, a.address) for a in strict.addresses(socket.AF_INET, lo)
        ]


AF_MCTP, AF_PHONET = 45, 35


def crafted_address(family: int, raw: bytes, index: int = 7) -> bytes:
    """The payload of an RTM_NEWADDR message as the kernel sends it: ifaddrmsg, then IFA_ADDRESS."""
    attr = struct.pack("=HH", 4 + len(raw), 1) + raw
    return struct.pack("=BBBBI", family, 8 * len(raw), 0, 0, index) + attr + b"\0" * (-len(attr) % 4)


class CraftedDump(Rtnl):
    """A real socket whose address dumps answer with crafted messages: the families a host may carry besides
    IPv4 and IPv6 (MCTP, Phonet: their addresses are one byte, not an IP address)."""

    def _request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        return [
            crafted_address(AF_MCTP, b"\x08"),
            crafted_address(socket.AF_INET, socket.inet_pton(socket.AF_INET, "192.0.2.7")),
            crafted_address(AF_PHONET, b"\x10"),
            crafted_address(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "2001:db8::7")),
        ]


def test_addresses_of_other_families_than_ipv4_and_ipv6_are_skipped() -> None:
    with CraftedDump() as rtnl:
        everything = [(a.family, a.address) for a in rtnl.addresses()]
        v6 = [(a.family, a.address) for a in rtnl.addresses(socket.AF_INET6, 7)]
    assert everything == [(socket.AF_INET, "192.0.2.7"), (socket.AF_INET6, "2001:db8::7")]
    assert v6 == [(socket.AF_INET6, "2001:db8::7")]


def test_a_request_the_kernel_refuses_raises_its_errno() -> None:
    with Rtnl() as rtnl, pytest.raises(OSError) as refused:
        rtnl.set_address(False, 0x7FFFFFF0, "192.0.2.1", 24, 5, proto=222, label="nosuch:fos")
    assert refused.value.errno == errno.ENODEV


def test_an_answer_not_from_the_kernel_is_ignored() -> None:
    with Rtnl() as rtnl, socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as forger:
        forger.bind((0, 0))
        port = rtnl._sock.getsockname()[0]
        # A forged "permission denied" for the next request (sequence 1), queued before the kernel's answer.
        forger.sendto(struct.pack("=IHHIIi", 20, 2, 0, 1, forger.getsockname()[0], -errno.EPERM), (port, 0))
        assert "lo" in {link.name for link in rtnl.links()}


def test_an_answer_larger_than_the_receive_buffer_is_an_error_not_a_truncated_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rtnl_module, "_RECV_BUFFER", 128)  # smaller than any link message
    with Rtnl(timeout=2.0) as rtnl, pytest.raises(OSError) as truncated:
        rtnl.links()
    assert truncated.value.errno == errno.EMSGSIZE


def test_a_request_that_gets_no_answer_times_out() -> None:
    with Rtnl(timeout=0.2) as rtnl:
        rtnl._sock = DroppingSocket(rtnl._sock)  # type: ignore[assignment]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            rtnl.links()
    assert time.monotonic() - started < 1.0


class DroppingSocket:
    """A real netlink socket whose requests never leave: no answer ever comes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> int:
        return len(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


# ---- a crowded host: thousands of addresses on another interface, and churn --------------------------------

CROWD = 2000
# The start of a script run inside the test host: `churn` adds and deletes an address on d1 as fast as netlink
# allows until `stop` is set (the caller runs it in a thread beside what it measures).
CHURN = """
import socket, threading
from netops.rtnl import Rtnl
stop = threading.Event()
def churn():
    with Rtnl() as r:
        d1 = socket.if_nametoindex("d1")
        while not stop.is_set():
            r.set_address(False, d1, "10.250.0.9", 32, 100, proto=3)
            r.delete_address(d1, "10.250.0.9", 32)
"""
# Inside the test host: churn on d1 while the binder binds (the holder's every renewal) 100 times; prints the
# failures as JSON.
CHURNED_BINDS = (
    CHURN
    + """
import asyncio, ipaddress, json, sys, time
from netops import NetlinkBinder, NetopsError
from netops import rtnl as rtnl_module
async def main():
    b = NetlinkBinder("eth0", ipaddress.ip_interface(sys.argv[1]))
    failures = []
    for _ in range(100):
        try:
            await b.bind(30, force=True, not_after=time.clock_gettime(time.CLOCK_BOOTTIME) + 40)
        except NetopsError as exc:
            failures.append(str(exc))
    return failures
t = threading.Thread(target=churn)
t.start()
try:
    print(json.dumps(asyncio.run(main())))
finally:
    stop.set()
    t.join()
"""
)


def crowd(host: Host) -> None:
    """A second veth pair in `host` with CROWD addresses on d1."""
    host.run("ip", "link", "add", "d1", "type", "veth", "peer", "name", "d2")
    host.run("ip", "link", "set", "d1", "up")
    batch = "".join(f"addr add 10.{100 + i // 250}.{i % 250}.1/32 dev d1\n" for i in range(CROWD))
    subprocess.run(host.argv(["ip", "-batch", "-"]), input=batch, text=True, check=True, timeout=60)


def test_binds_succeed_on_a_host_with_thousands_of_addresses_changing_on_another_interface(lan: Lan) -> None:
    m1 = lan.add_host("m1")
    crowd(m1)
    out = m1.run(sys.executable, "-c", CHURNED_BINDS, f"{VIP}/24", timeout=60)
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, f"{len(failures)} of 100 binds failed, e.g. {failures[0]}"
    assert m1.has_address(VIP)
