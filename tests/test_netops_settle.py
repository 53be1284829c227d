"""Cancelling a binder operation never abandons its netlink or raw-socket work: the cancel returns only after the
work ended, so the address is settled and no packet goes out afterwards. Unit tests of netops.settle with a real
worker thread, then the binder on namespaces with a packet watcher in a neighbour host."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from netops import NetopsError
from netops.rtnl import DumpInterrupted
from netops.settle import settled
from tests.support.netns import Host, Lan
from tests.test_netops_binder import ROOT, VIP, VIP6, netop

# A packet sent before the cancel returned reaches the neighbour microseconds later; allow for clock reading.
ARRIVAL_SLACK_S = 0.005


async def test_a_cancel_returns_only_after_the_thread_ended() -> None:
    ended = threading.Event()

    def work() -> None:
        time.sleep(0.3)
        ended.set()

    task = asyncio.ensure_future(settled(work, "test"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set(), "the cancel returned while the thread was still working"


async def test_a_cancel_sets_the_stop_event_so_the_work_ends_early() -> None:
    stop = threading.Event()
    task = asyncio.ensure_future(settled(lambda: stop.wait(5.0), "test", stop))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5 and stop.is_set()


async def test_a_second_cancel_while_waiting_is_absorbed_until_the_thread_ended() -> None:
    stop, ended = threading.Event(), threading.Event()

    def work() -> None:
        stop.wait(5.0)
        time.sleep(0.2)
        ended.set()

    task = asyncio.ensure_future(settled(work, "test", stop))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set() and ended.is_set()


async def test_a_timeout_around_settled_work_still_becomes_a_timeout_error_after_the_work() -> None:
    ended = threading.Event()

    def work() -> None:
        time.sleep(0.2)
        ended.set()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await settled(work, "test")
    assert ended.is_set()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(24, "Too many open files"), "cannot add X: Too many open files"),
        (PermissionError(1, "Operation not permitted"), "not permitted"),
        (OSError(19, "No such device"), "the interface disappeared"),
        (RuntimeError("two\nlines"), "cannot add X: two lines"),
        (DumpInterrupted(), "cannot add X: the kernel's address table kept changing; retry"),
    ],
)
async def test_any_failure_of_the_work_becomes_a_one_line_netops_error(error: Exception, message: str) -> None:
    def work() -> None:
        raise error

    with pytest.raises(NetopsError) as caught:
        await settled(work, "add X")
    assert message in str(caught.value) and "\n" not in str(caught.value)


# ---- on namespaces ---------------------------------------------------------------------------------------


@pytest.fixture
def trio(lan: Lan) -> tuple[Host, Host, Host]:
    return lan.add_host("m1"), lan.add_host("m2"), lan.add_host("client")


def watch(host: Host) -> subprocess.Popen[str]:
    proc = host.popen([sys.executable, "-m", "tests.support.linkwatch"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc  # type: ignore[return-value]


def seen(proc: subprocess.Popen[str], settle: float = 0.3) -> list[tuple[float, str, str]]:
    """Every packet line the watcher printed, after letting late packets arrive for `settle` seconds."""
    time.sleep(settle)
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    rows = [line.split() for line in out.splitlines()]
    return [(float(r[0]), r[1], r[2]) for r in rows if len(r) == 3]


@pytest.mark.parametrize("vip", [f"{VIP}/24", f"{VIP6}/64"], ids=["ipv4", "ipv6"])
def test_a_bind_cancelled_during_its_netlink_write_is_settled_and_unbind_removes_it_for_good(
    trio: tuple[Host, Host, Host], vip: str
) -> None:
    m1 = trio[0]
    ip = vip.split("/")[0]
    done = netop(m1, "cancel_bind", vip, "--force", "--slow-write", "0.4", "--cancel-after", "0.1")
    assert done["ok"] and done["result"]["cancelled"], done
    waited = done["result"]["returned"] - done["result"]["requested"]
    assert waited >= 0.25, f"the cancel returned after {waited:.3f}s, before the slowed write could have ended"
    assert done["result"]["unbound"] is True, "the unbind after the cancel found nothing to remove"
    end = time.monotonic() + 0.8
    while time.monotonic() < end:  # the abandoned write of the old code landed here, 0.3 s after the cancel
        assert not m1.has_address(ip), "the address came back after the cancelled bind was unbound"
        time.sleep(0.05)


@pytest.mark.parametrize(("vip", "kind"), [(f"{VIP}/24", "arp"), (f"{VIP6}/64", "na")], ids=["ipv4", "ipv6"])
def test_a_cancelled_announce_sends_nothing_after_the_cancel_returned(
    trio: tuple[Host, Host, Host], vip: str, kind: str
) -> None:
    m1, _, client = trio
    assert netop(m1, "bind", vip, "--force")["ok"]
    watcher = watch(client)
    done = netop(
        m1, "cancel_announce", vip, "--announce-count", "20", "--announce-interval", "0.1", "--cancel-after", "0.25"
    )
    assert done["ok"] and done["result"]["cancelled"], done
    mine = [t for t, k, mac in seen(watcher) if k == kind and mac == m1.mac]
    returned = done["result"]["returned"]
    assert returned - done["result"]["requested"] < 0.1, "the announcer did not stop promptly"
    assert mine, f"no {kind} from m1 before the cancel: the watcher saw nothing"
    late = [t - returned for t in mine if t > returned + ARRIVAL_SLACK_S]
    assert not late, f"{len(late)} {kind} packets from m1 after the cancel returned (first +{late[0]:.3f}s)"


def test_a_cancelled_probe_sends_no_probe_after_the_cancel_returned(trio: tuple[Host, Host, Host]) -> None:
    m2, client = trio[1], trio[2]
    watcher = watch(client)
    # Two probes spread over 1 s: the second would go out at 0.5 s; cancel at 0.15 s.
    done = netop(m2, "cancel_probe", f"{VIP}/24", "--probe-timeout", "1.0", "--cancel-after", "0.15")
    assert done["ok"] and done["result"]["cancelled"], done
    mine = [t for t, k, mac in seen(watcher, 0.6) if k == "arp-probe" and mac == m2.mac]
    returned = done["result"]["returned"]
    assert mine, "the first probe never reached the neighbour"
    assert all(t <= returned + ARRIVAL_SLACK_S for t in mine), "a probe went out after the cancel returned"


def test_a_bind_cancelled_during_its_probe_stops_at_once_and_never_adds_the_address(
    trio: tuple[Host, Host, Host],
) -> None:
    m1 = trio[0]
    done = netop(m1, "cancel_bind", f"{VIP}/24", "--probe-timeout", "1.0", "--cancel-after", "0.15")
    assert done["ok"] and done["result"]["cancelled"], done
    assert done["result"]["returned"] - done["result"]["requested"] < 0.1, "the probe did not stop promptly"
    assert done["result"]["unbound"] is False
    end = time.monotonic() + 1.2  # past the end of the 1 s probe: the bind must not have gone on in a thread
    while time.monotonic() < end:
        assert not m1.has_address(VIP), "the cancelled bind added the address"
        time.sleep(0.05)
