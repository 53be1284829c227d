"""The common IP on real network namespaces: bind, kernel lifetime, move with announcements, conflict probe,
and never touching an address fos did not add. Each operation runs inside a test host via tests.support.nsbind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from netops import KERNEL_LATENESS_S, kernel_marks_addresses
from tests.support.netns import SUBNET, SUBNET6, Host, Lan, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIP = f"{SUBNET}.100"
VIP6 = f"{SUBNET6}100"
WEBAPP = os.path.join(ROOT, "examples", "webapp.py")


def netop(host: Host, action: str, address: str, *extra: str) -> Any:
    argv = [sys.executable, "-m", "tests.support.nsbind", action, "--address", address, *extra]
    out = subprocess.run(host.argv(argv), capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    doc = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {"ok": False, "error": out.stderr}
    return doc


def http_get(client: Host, ip: str, timeout: float = 1.0) -> str | None:
    host = f"[{ip}]" if ":" in ip else ip
    code = (
        f"import urllib.request;print(urllib.request.urlopen('http://{host}:8080/', timeout={timeout}).read().decode())"
    )
    out = client.run(sys.executable, "-c", code, check=False, timeout=timeout + 10)
    return out.stdout.strip() if out.returncode == 0 else None


def start_webapp(host: Host) -> None:
    host.popen([sys.executable, WEBAPP, "--name", host.name, "--port", "8080"])
    wait_for(lambda: http_get(host, "127.0.0.1"), 10, 0.05, f"webapp on {host.name}")


@pytest.fixture
def trio(lan: Lan) -> tuple[Host, Host, Host]:
    return lan.add_host("m1"), lan.add_host("m2"), lan.add_host("client")


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_bind_on_m1_serves_the_client_and_its_neighbour_cache_shows_m1(trio: tuple[Host, Host, Host], vip: str) -> None:
    m1, _, client = trio
    ip = vip.split("/")[0]
    assert netop(m1, "bind", vip) == {"ok": True, "result": True}
    assert netop(m1, "bind", vip) == {"ok": True, "result": False}, "a second bind must be a no-op"
    assert netop(m1, "is_bound", vip)["result"] is True
    start_webapp(m1)
    answer = wait_for(lambda: http_get(client, ip), 10, 0.05, "the client to reach the common IP")
    assert answer.startswith("m1")
    assert client.neighbour_mac(ip) == m1.mac


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_an_address_with_a_2s_lifetime_disappears_by_itself(trio: tuple[Host, Host, Host], vip: str) -> None:
    m1 = trio[0]
    ip = vip.split("/")[0]
    started = time.monotonic()
    assert netop(m1, "bind", vip, "--lifetime", "2", "--force")["ok"]
    bound_at = time.monotonic()
    wait_for(lambda: not m1.has_address(ip), 4.0, 0.01, "the kernel to remove the address")
    gone = time.monotonic()
    # The address was added between `started` and `bound_at`, so the kernel's lateness lies between these.
    late_min, late_max = gone - bound_at - 2.0, gone - started - 2.0
    print(f"kernel removed {vip} between {late_min:.3f} and {late_max:.3f}s after its 2s lifetime")
    assert late_max >= 0, "removed before its lifetime ran out"
    # Polling with a process start per look adds up to ~0.1 s; the exact lateness is in test_netops_lifetime.py.
    assert late_min <= KERNEL_LATENESS_S + 0.1, f"still there {gone - bound_at:.3f}s after a 2s lifetime"


def test_an_address_refreshed_every_second_stays(trio: tuple[Host, Host, Host]) -> None:
    m1 = trio[0]
    holder = m1.popen(
        [
            sys.executable,
            "-m",
            "tests.support.nsbind",
            "hold",
            "--address",
            f"{VIP}/24",
            "--lifetime",
            "2",
            "--seconds",
            "4",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline())["ok"]
    end = time.monotonic() + 3.5
    samples = 0
    while time.monotonic() < end:
        assert m1.has_address(VIP), "the refreshed address disappeared"
        samples += 1
        time.sleep(0.05)
    assert samples > 20
    holder.wait(timeout=10)
    # Refreshing stopped: the last lifetime (2 s) runs out.
    wait_for(lambda: not m1.has_address(VIP), 3.0, 0.02, "the unrefreshed address to expire")


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_moving_to_m2_with_announce_updates_the_client_within_a_second(trio: tuple[Host, Host, Host], vip: str) -> None:
    m1, m2, client = trio
    ip = vip.split("/")[0]
    start_webapp(m1)
    start_webapp(m2)
    assert netop(m1, "bind", vip)["ok"]
    wait_for(lambda: http_get(client, ip), 10, 0.05, "the client to reach m1")
    assert client.neighbour_mac(ip) == m1.mac
    assert netop(m1, "unbind", vip)["result"] is True
    moved = time.monotonic()
    assert netop(m2, "bind_announce", vip)["ok"]
    wait_for(lambda: client.neighbour_mac(ip) == m2.mac, 1.0, 0.01, "the client's cache to show m2")
    print(f"client cache showed m2 {time.monotonic() - moved:.3f}s after the move began")
    assert (http_get(client, ip) or "").startswith("m2")


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_probe_sees_the_holder_and_bind_refuses_a_conflict_unless_forced(
    trio: tuple[Host, Host, Host], vip: str
) -> None:
    m1, m2, _ = trio
    assert netop(m2, "probe", vip)["result"] is None, "nobody holds it yet"
    assert netop(m1, "bind", vip)["ok"]
    assert netop(m2, "probe", vip)["result"] == m1.mac
    refused = netop(m2, "bind", vip)
    assert refused["ok"] is False and refused["type"] == "AddressConflict" and m1.mac in refused["error"]
    assert not m2.has_address(vip.split("/")[0])
    forced = netop(m2, "bind", vip, "--force")
    assert forced["ok"] and m2.has_address(vip.split("/")[0])
    assert netop(m2, "unbind", vip)["result"] is True
    assert netop(m1, "unbind", vip)["result"] is True
    assert netop(m2, "probe", vip)["result"] is None, "free again after unbind"


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_unbind_never_removes_an_address_fos_did_not_add(trio: tuple[Host, Host, Host], vip: str) -> None:
    m1 = trio[0]
    ip = vip.split("/")[0]
    m1.run("ip", "addr", "add", vip, "dev", "eth0", *(["nodad"] if ":" in ip else []))
    assert netop(m1, "unbind", vip) == {"ok": True, "result": False}
    assert m1.has_address(ip)
    assert netop(m1, "is_bound", vip)["result"] is False
    taken = netop(m1, "bind", vip)
    assert taken["ok"] is False and "not by fos" in taken["error"]
    assert m1.has_address(ip)


def test_unbind_when_absent_is_fine(trio: tuple[Host, Host, Host]) -> None:
    assert netop(trio[0], "unbind", f"{VIP}/24") == {"ok": True, "result": False}


def test_refresh_does_not_re_add_an_address_the_kernel_removed(trio: tuple[Host, Host, Host]) -> None:
    m1 = trio[0]
    assert netop(m1, "bind", f"{VIP}/24", "--lifetime", "1")["ok"]
    wait_for(lambda: not m1.has_address(VIP), 3.0, 0.02, "expiry")
    assert netop(m1, "refresh", f"{VIP}/24", "--lifetime", "5")["result"] is False
    assert not m1.has_address(VIP)


@pytest.mark.parametrize(
    ("vip", "message"),
    [("10.99.0.100/24", "is not in a subnet of eth0"), (f"{VIP}/24", "interface 'eth9' does not exist")],
)
def test_bind_refuses_a_wrong_subnet_or_interface(trio: tuple[Host, Host, Host], vip: str, message: str) -> None:
    extra = ["--interface", "eth9"] if "eth9" in message else []
    result = netop(trio[0], "bind", vip, *extra)
    assert result["ok"] is False and message in result["error"]


def test_bind_refuses_an_interface_that_is_down(trio: tuple[Host, Host, Host]) -> None:
    m1 = trio[0]
    m1.run("ip", "link", "set", "eth0", "down")
    result = netop(m1, "bind", f"{VIP}/24")
    assert result["ok"] is False and "bring it up" in result["error"]


# ---- the operator's addresses on a 15-character interface -------------------------------------------------

NIC15 = "vethfos15chars0"  # IFNAMSIZ - 1 = 15 characters: "<if>:fos" cut to 15 would be the name itself
SUBNET9 = "10.213.9"


def add_nic15(host: Host) -> None:
    host.run("ip", "link", "add", NIC15, "type", "veth", "peer", "name", "vpeer0")
    host.run("ip", "addr", "add", f"{SUBNET9}.1/24", "dev", NIC15)
    host.run("ip", "link", "set", NIC15, "up")
    host.run("ip", "link", "set", "vpeer0", "up")


def nic15_addresses(host: Host) -> list[str]:
    doc = json.loads(host.run("ip", "-j", "-4", "addr", "show", "dev", NIC15).stdout)
    return [a["local"] for a in doc[0].get("addr_info", [])]


def test_unbind_never_removes_an_operators_address_on_an_interface_with_a_15_character_name(
    trio: tuple[Host, Host, Host],
) -> None:
    m1 = trio[0]
    add_nic15(m1)
    operators, ours = f"{SUBNET9}.100/24", f"{SUBNET9}.101/24"
    m1.run("ip", "addr", "add", operators, "dev", NIC15)  # labelled with the interface name, as by default
    assert netop(m1, "unbind", operators, "--interface", NIC15) == {"ok": True, "result": False}
    assert netop(m1, "is_bound", operators, "--interface", NIC15)["result"] is False
    assert f"{SUBNET9}.100" in nic15_addresses(m1), "fos removed the operator's address"
    refused = netop(m1, "bind", operators, "--interface", NIC15, "--force")
    assert refused["ok"] is False and "not by fos" in refused["error"]
    # fos still recognises its own address there, and its label is not the interface name.
    assert netop(m1, "bind", ours, "--interface", NIC15, "--force") == {"ok": True, "result": True}
    doc = json.loads(m1.run("ip", "-j", "addr", "show", "dev", NIC15).stdout)
    labels = {a["local"]: a.get("label") for a in doc[0]["addr_info"]}
    assert labels[f"{SUBNET9}.101"] != NIC15 and labels[f"{SUBNET9}.101"].endswith(":fos")
    assert netop(m1, "unbind", ours, "--interface", NIC15) == {"ok": True, "result": True}
    assert nic15_addresses(m1) == [f"{SUBNET9}.1", f"{SUBNET9}.100"]


# ---- every failure is a one-line NetopsError ---------------------------------------------------------------


def assert_one_line_netops_error(result: Any, *words: str) -> None:
    assert result["ok"] is False, result
    assert result.get("type") == "NetopsError", f"not a NetopsError: {result['error'][-300:]}"
    assert "\n" not in result["error"] and all(w in result["error"] for w in words), result["error"]


def test_unbind_on_an_interface_that_vanishes_mid_way_is_a_one_line_netops_error(
    trio: tuple[Host, Host, Host],
) -> None:
    m1 = trio[0]
    add_nic15(m1)
    vip = f"{SUBNET9}.100/24"
    assert netop(m1, "bind", vip, "--interface", NIC15, "--force")["ok"]
    result = netop(m1, "unbind", vip, "--interface", NIC15, "--vanish-after", "find")
    assert_one_line_netops_error(result, "disappeared", NIC15)


def test_an_interface_deleted_between_calls_is_a_one_line_netops_error(trio: tuple[Host, Host, Host]) -> None:
    m1 = trio[0]
    add_nic15(m1)
    vip = f"{SUBNET9}.100/24"
    assert netop(m1, "bind", vip, "--interface", NIC15, "--force")["ok"]
    m1.run("ip", "link", "del", NIC15)
    for action in ("unbind", "is_bound", "refresh", "announce"):
        assert_one_line_netops_error(netop(m1, action, vip, "--interface", NIC15), NIC15)


@pytest.mark.parametrize("action", ["bind", "unbind", "is_bound", "probe"])
def test_no_netlink_or_packet_socket_to_be_had_is_a_one_line_netops_error(
    trio: tuple[Host, Host, Host], action: str
) -> None:
    result = netop(trio[0], action, f"{VIP}/24", "--force", "--max-files", "0")
    assert_one_line_netops_error(result, "Too many open files")


# ---- probing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_probe_until_clear_waits_out_an_address_the_kernel_is_about_to_remove(
    trio: tuple[Host, Host, Host], vip: str
) -> None:
    m1, m2, _ = trio
    assert netop(m1, "bind", vip, "--force", "--lifetime", "1")["ok"]
    result = netop(m2, "probe_until_clear", vip, "--window", "3", "--probe-timeout", "0.2")
    assert result["ok"] and result["result"]["mac"] is None, result
    elapsed = result["result"]["elapsed"]
    assert 0.3 <= elapsed <= 1.0 + KERNEL_LATENESS_S + 0.5, f"clear after {elapsed:.3f}s"


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_probe_until_clear_reports_an_owner_that_stays_for_the_whole_window(
    trio: tuple[Host, Host, Host], vip: str
) -> None:
    m1, m2, _ = trio
    assert netop(m1, "bind", vip, "--force")["ok"]
    result = netop(m2, "probe_until_clear", vip, "--window", "0.7", "--probe-timeout", "0.2")
    assert result["ok"] and result["result"]["mac"] == m1.mac, result
    assert 0.7 <= result["result"]["elapsed"] <= 0.7 + 0.2 + 0.3


def test_probe_until_clear_with_nobody_there_takes_one_probe(trio: tuple[Host, Host, Host]) -> None:
    result = netop(trio[1], "probe_until_clear", f"{VIP}/24", "--window", "2", "--probe-timeout", "0.2")
    assert result["ok"] and result["result"]["mac"] is None
    assert result["result"]["elapsed"] < 0.5


def test_a_forced_bind_never_probes_and_a_normal_one_does(trio: tuple[Host, Host, Host]) -> None:
    from tests.test_netops_settle import seen, watch

    m1, m2, client = trio
    watcher = watch(client)
    assert netop(m1, "bind", f"{VIP}/24", "--force", "--probe-timeout", "0.3")["ok"]
    assert netop(m2, "bind", f"{SUBNET}.101/24", "--probe-timeout", "0.3")["ok"]
    probers = {mac for _, kind, mac in seen(watcher) if kind == "arp-probe"}
    assert m2.mac in probers, "the unforced bind did not probe (or the watcher missed it)"
    assert m1.mac not in probers, "the forced bind probed"


def test_the_binders_probe_timeout_defaults_to_the_configs() -> None:
    import dataclasses
    import ipaddress

    from agent.config import Config
    from netops import NetlinkBinder

    default = {f.name: f.default for f in dataclasses.fields(Config)}["probe_timeout"]
    assert NetlinkBinder("eth0", ipaddress.ip_interface(f"{VIP}/24")).probe_timeout == default == 0.2


def _valid_lft(host: Host, ip: str) -> int | None:
    out = host.run("ip", "-j", "addr", "show", "dev", "eth0")
    for link in json.loads(out.stdout):
        for a in link.get("addr_info", []):
            if a.get("local") == ip:
                return int(a["valid_life_time"])
    return None


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_a_write_caps_the_lifetime_at_the_callers_deadline_or_writes_nothing(
    trio: tuple[Host, Host, Host], vip: str
) -> None:
    m1, _, _ = trio
    ip = vip.split("/")[0]
    # Not even 1 s fits before the deadline once the kernel's lateness is counted: nothing is added.
    late = netop(m1, "bind", vip, "--lifetime", "30", "--force", "--not-after-in", str(KERNEL_LATENESS_S + 0.5))
    assert late["ok"] is False and late["type"] == "DeadlinePassed", late
    assert _valid_lft(m1, ip) is None, "a write that missed its deadline must add nothing"
    # 3.5 s before the deadline: the 30 s asked for is cut so that the kernel drops it by the deadline.
    capped = netop(m1, "bind", vip, "--lifetime", "30", "--force", "--not-after-in", str(KERNEL_LATENESS_S + 3.5))
    assert capped == {"ok": True, "result": True}, capped
    lifetime = _valid_lft(m1, ip)
    assert lifetime is not None and lifetime <= 3


@pytest.mark.parametrize(
    ("release", "marks"),
    [("6.18.0-1-amd64", True), ("6.3.0", True), ("6.1.0-28-amd64", False), ("5.15.0-91-generic", False), ("x", False)],
)
def test_an_ipv6_common_ip_needs_a_kernel_that_marks_fos_addresses(release: str, marks: bool) -> None:
    assert kernel_marks_addresses(release) is marks


# Inside the test host: every netlink address write is stalled first by the next of argv[2:] seconds (a
# descheduling or a freeze right before the write); bind with a deadline G + 3.5 s ahead; print each write (when
# it returned, its lifetime), the outcome and the deadline as JSON.
STALLED_WRITES = """
import asyncio, ipaddress, json, sys, time
from netops import KERNEL_LATENESS_S, NetlinkBinder, NetopsError
from netops.rtnl import Rtnl
stalls = [float(s) for s in sys.argv[2:]]
writes = []
write = Rtnl.set_address
def stalled(self, replace, index, ip, prefixlen, lifetime, **kw):
    time.sleep(stalls.pop(0) if stalls else 0)
    write(self, replace, index, ip, prefixlen, lifetime, **kw)
    writes.append((time.clock_gettime(time.CLOCK_BOOTTIME), lifetime))
Rtnl.set_address = stalled
async def main():
    b = NetlinkBinder("eth0", ipaddress.ip_interface(sys.argv[1]))
    not_after = time.clock_gettime(time.CLOCK_BOOTTIME) + KERNEL_LATENESS_S + 3.5
    try:
        outcome = await b.bind(30, force=True, not_after=not_after)
    except NetopsError as exc:
        outcome = type(exc).__name__
    return {"outcome": outcome, "writes": writes, "not_after": not_after, "written": b.written_lifetime}
print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.parametrize(
    ("stalls", "kept"),
    [(("0.7", "1.5"), True), (("0.7", "3"), False)],
    ids=["rewrite-stalled-still-fits", "rewrite-stalled-past-the-deadline"],
)
def test_a_write_stalled_after_every_recheck_still_leaves_no_address_outliving_the_deadline(
    trio: tuple[Host, Host, Host], stalls: tuple[str, ...], kept: bool
) -> None:
    m1 = trio[0]
    out = m1.run(sys.executable, "-c", STALLED_WRITES, f"{VIP}/24", *stalls, timeout=30)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(doc["writes"]) >= 2, f"the stall after the first write was not re-checked: {doc}"
    if kept:
        at, lifetime = doc["writes"][-1]
        assert doc["outcome"] is True and doc["written"] == lifetime, doc
        assert at + lifetime + KERNEL_LATENESS_S <= doc["not_after"], f"the last write outlives the deadline: {doc}"
        assert (_valid_lft(m1, VIP) or 0) <= lifetime
    else:
        assert doc["outcome"] == "DeadlinePassed" and doc["written"] is None, doc
        assert _valid_lft(m1, VIP) is None, "a write that ran past its deadline must leave no address"
