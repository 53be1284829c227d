"""Wake-up hints (agent/wake.py): the datagram's format and the rate limit as pure rules; real UDP on loopback
(listener and sender; the sender's own rules: tests/test_agent_wake_send.py); and the agent's loop reacting to a
hint on the in-memory store (a standby reads at once, a holder reads its control state at once, a flood causes at
most the allowed reads). The namespace cluster's view: tests/test_agent_wake_netns.py."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.clock import wait_either
from agent.config import Config
from agent.metrics import Metrics
from agent.roles import Role
from agent.wake import (
    COMMAND_SENDER,
    HINT_INTERVAL_S,
    Hint,
    HintGate,
    HintKind,
    WakeListener,
    decode,
    encode,
    start_listener,
)
from agent.wake_send import Waker, wake_peers
from lease import EventKind
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until

# ---- the datagram ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hint",
    [
        Hint("c1", "m1", HintKind.RELEASED),
        Hint("helpdesk.prod-2", "node_07", HintKind.HANDOVER),
        Hint("c1", COMMAND_SENDER, HintKind.CONTROL),
        Hint("x" * 64, "y" * 64, HintKind.CONTROL),
    ],
)
def test_a_hint_survives_encoding(hint: Hint) -> None:
    data = encode(hint)
    assert decode(data) == hint
    assert len(data) <= 4 + 2 + 2 + 128  # a few bytes: one small datagram


GOOD = encode(Hint("c1", "m1", HintKind.RELEASED))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (GOOD[:3], "shorter than the header"),
        (GOOD[:-1], "the sender cut short"),
        (GOOD + b"x", "a byte too many"),
        (b"fosX" + GOOD[4:], "another magic"),
        (GOOD[:4] + bytes([2]) + GOOD[5:], "another version"),
        (GOOD[:5] + bytes([9]) + GOOD[6:], "an unknown kind"),
        (GOOD[:6] + bytes([200]) + GOOD[7:], "a cluster length beyond the datagram"),
        (GOOD[:7] + b"\xff" + GOOD[8:], "a cluster that is not UTF-8"),
        (b"GET / HTTP/1.1\r\n\r\n", "something else entirely"),
    ],
)
def test_a_datagram_that_is_not_exactly_one_hint_decodes_to_none(data: bytes, why: str) -> None:
    assert decode(data) is None, why


# ---- the rate limit -------------------------------------------------------------------------------------------


def test_the_gate_acts_at_once_then_folds_a_burst_into_one_wake_up_at_the_end_of_the_interval() -> None:
    gate = HintGate(interval=0.05)
    steps = [  # (sender, now, expected)
        ("m1", 10.00, 10.00),  # the first acts at once
        ("m1", 10.01, 10.05),  # within the interval: at its end, not lost
        ("m1", 10.02, None),  # already scheduled: folded into it
        ("m1", 10.04, None),
        ("m2", 10.04, 10.04),  # another sender has its own allowance
        ("m1", 10.05, 10.10),  # at the scheduled one's time (it may have fired): the next interval's end
        ("m1", 10.07, None),
        ("m1", 10.30, 10.30),  # quiet for an interval: at once again
    ]
    got = [gate.when(sender, now) for sender, now, _ in steps]
    assert [None if at is None else round(at, 6) for at in got] == [expected for _, _, expected in steps]


def test_the_gate_allows_at_most_one_wake_up_per_interval_and_sender_under_a_flood() -> None:
    gate = HintGate(interval=0.05)
    fired = [at for i in range(10_000) if (at := gate.when("m1", i * 0.0001)) is not None]  # 1 s of 10 kHz
    assert len(fired) <= 1 / 0.05 + 1
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(fired))


# ---- real datagrams on loopback -------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_config(port: int, **kwargs: Any) -> Config:
    """The fast agents' two-node config, every node's url on loopback, the wake port `port`."""
    cfg = config(**kwargs)
    nodes = tuple(dataclasses.replace(n, url="http://127.0.0.1:8080/") for n in cfg.nodes)
    return dataclasses.replace(cfg, nodes=nodes, wake_port=port)


@pytest.fixture
def port() -> int:
    return free_udp_port()


def count(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_total")
    return 0.0 if value is None else value


async def test_a_hint_goes_from_the_sender_to_the_listener_over_udp(port: int) -> None:
    cfg = loopback_config(port)
    wake, metrics, sender_metrics = asyncio.Event(), Metrics(), Metrics()
    listener = await start_listener(cfg, "m2", wake, metrics)
    assert listener is not None
    try:
        waker = Waker(cfg, "m1", sender_metrics)
        assert waker.hosts == ["127.0.0.1"]  # the host of each other node's url (not m1's own)
        assert await waker.wake_peers(HintKind.RELEASED) == 1
        await asyncio.wait_for(wake.wait(), 2)
        assert count(metrics, "fos_wake_hints_received") == 1 and count(sender_metrics, "fos_wake_hints_sent") == 1
    finally:
        listener.close()


async def test_a_commands_hint_reaches_the_listener_and_the_command_logs_nothing(port: int) -> None:
    cfg = loopback_config(port)
    wake, metrics = asyncio.Event(), Metrics()
    listener = await start_listener(cfg, "m1", wake, metrics)
    assert listener is not None
    try:
        with capture_logs() as logs:
            assert await wake_peers(cfg, HintKind.CONTROL) == 1  # m1 and m2 share 127.0.0.1: one datagram
        await asyncio.wait_for(wake.wait(), 2)
        assert logs == []  # a command's output is its one line
    finally:
        listener.close()


async def test_malformed_foreign_and_unknown_sender_datagrams_are_ignored(port: int) -> None:
    cfg = loopback_config(port)
    wake, metrics = asyncio.Event(), Metrics()
    listener = await start_listener(cfg, "m2", wake, metrics)
    assert listener is not None
    junk = [
        b"garbage",
        encode(Hint("c1", "m1", HintKind.RELEASED))[:-1],
        encode(Hint("another-cluster", "m1", HintKind.RELEASED)),
        encode(Hint("c1", "m9", HintKind.RELEASED)),  # no node of the config
        encode(Hint("c1", "m2", HintKind.RELEASED)),  # the listener's own name: never from another node
    ]
    try:
        with capture_logs() as logs, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in junk:
                s.sendto(data, ("127.0.0.1", port))
            await until(lambda: count(metrics, "fos_wake_hints_ignored") == len(junk), 2, "the junk to arrive")
        assert not wake.is_set() and count(metrics, "fos_wake_hints_received") == 0
        assert all(entry["log_level"] == "debug" for entry in logs), logs  # never above debug per datagram
    finally:
        listener.close()


async def test_a_flood_of_hints_sets_the_event_at_most_once_per_interval_and_sender(port: int) -> None:
    cfg = loopback_config(port)
    wake, metrics = asyncio.Event(), Metrics()
    listener = await start_listener(cfg, "m2", wake, metrics)
    assert listener is not None
    wake_ups = 0
    stop = asyncio.Event()

    async def consumer() -> None:  # as the standby's loop: one read per wake-up
        nonlocal wake_ups
        while not stop.is_set():
            await wait_either(stop, wake, 10)
            if wake.is_set():
                wake.clear()
                wake_ups += 1

    task = asyncio.create_task(consumer())
    flood = 400
    try:
        began = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(flood):
                s.sendto(encode(Hint("c1", "m1" if i % 2 else COMMAND_SENDER, HintKind.CONTROL)), ("127.0.0.1", port))
                if i % 20 == 0:
                    await asyncio.sleep(0.005)  # let the listener take them in as they come
        await until(lambda: count(metrics, "fos_wake_hints_received") == flood, 5, "the flood to arrive")
        lasted = time.monotonic() - began
        await asyncio.sleep(2 * HINT_INTERVAL_S)  # the last deferred wake-up of each sender falls due
        allowed = 2 * (lasted / HINT_INTERVAL_S + 2)  # two senders, each one per interval (+ a first and a last)
        print(f"{flood} hints over {lasted:.3f}s woke the consumer {wake_ups} times (allowed {allowed:.0f})")
        assert 2 <= wake_ups <= allowed
    finally:
        stop.set()
        await task
        listener.close()


async def test_a_port_in_use_is_one_warning_and_the_listener_stays_off(port: int) -> None:
    cfg = loopback_config(port)
    v4, v6 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with v4, v6:
        v4.bind(("0.0.0.0", port))
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))
        with capture_logs() as logs:
            assert await start_listener(cfg, "m2", asyncio.Event(), Metrics()) is None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["wake_port_not_bound"] and warnings[0]["port"] == port


async def test_wait_either_returns_on_either_event_or_the_timeout() -> None:
    a, b = asyncio.Event(), asyncio.Event()
    began = time.monotonic()
    await wait_either(a, b, 0.05)
    assert 0.04 < time.monotonic() - began < 1
    asyncio.get_running_loop().call_later(0.01, b.set)
    began = time.monotonic()
    await wait_either(a, b, 10)
    assert time.monotonic() - began < 1
    a.set()
    await wait_either(a, asyncio.Event(), 10)  # already set: at once


# ---- the agent's loop reacting to hints (in-memory store, fake IP and app) --------------------------------------


class CountingStore:
    """The shared in-memory store, counting one agent's lease reads (when each began and was answered); each read
    takes `delay` seconds (a slow database)."""

    def __init__(self, store: MemoryLeaseStore, delay: float = 0.0) -> None:
        self.store, self.delay = store, delay
        self.began: list[float] = []
        self.reads: list[float] = []
        self.running = 0  # reads under way (one cancelled with its task is not)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.began.append(time.monotonic())
        self.running += 1
        try:
            await asyncio.sleep(self.delay)
            state = await self.store.read(*args, **kwargs)
        finally:
            self.running -= 1
        self.reads.append(time.monotonic())
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
async def store() -> AsyncIterator[MemoryLeaseStore]:
    yield MemoryLeaseStore(clock=boottime)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        if node.task is not None:
            node.task.cancel()


SLOW = {"ttl": 12, "heartbeat": 4}  # a standby polls every 2 s, a holder reads its control state every 2 s


async def active_and_listening_standby(
    cfg: Config, store: MemoryLeaseStore, nodes: list[Node]
) -> tuple[Node, Node, CountingStore, WakeListener]:
    """m1 active, then m2 on a store counting its reads, with a hint listener on cfg's wake port."""
    m1 = Node(cfg, "m1", store).start()
    nodes.append(m1)
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    m2_store = CountingStore(store)
    m2 = Node(cfg, "m2", m2_store).start()
    nodes.append(m2)
    listener = await start_listener(cfg, "m2", m2.agent.wake, m2.agent.metrics)
    assert listener is not None
    return m1, m2, m2_store, listener


async def test_a_standby_takes_a_released_lease_at_once_on_the_hint_not_at_its_next_poll(
    store: MemoryLeaseStore, port: int, nodes: list[Node]
) -> None:
    cfg = loopback_config(port, **SLOW)
    m1, m2, m2_store, listener = await active_and_listening_standby(cfg, store, nodes)
    m1.agent.waker = Waker(cfg, "m1", m1.agent.metrics)
    try:
        await until(lambda: m2.agent.role is Role.STANDBY and len(m2_store.reads) >= 2, what="m2 standby, polling")
        polled = len(m2_store.reads)
        await until(lambda: len(m2_store.reads) > polled, 3, "a poll of m2")  # m2's next read is 2 s from now
        m1.agent.request_stop("test")
        await until(lambda: store.rows["c1"].holder == "m2", 3, "m2 to acquire")
        at = {(e.kind, e.node): t for e, t in zip(store.events, store.event_times, strict=True)}
        released, acquired = at[EventKind.RELEASED, "m1"], at[EventKind.ACQUIRED, "m2"]
        print(f"released -> acquired: {acquired - released:.3f}s (the next poll was 2 s away)")
        assert acquired - released < 0.3
        assert count(m2.agent.metrics, "fos_wake_hints_received") == 1
    finally:
        listener.close()


async def test_a_holder_reads_a_switchover_request_at_once_on_the_commands_hint(
    store: MemoryLeaseStore, port: int, nodes: list[Node]
) -> None:
    cfg = loopback_config(port, **SLOW)
    m1_store = CountingStore(store)
    m1 = Node(cfg, "m1", m1_store).start()
    nodes.append(m1)
    await until(lambda: m1.agent.role is Role.ACTIVE, what="m1 active")
    listener = await start_listener(cfg, "m1", m1.agent.wake, m1.agent.metrics)
    assert listener is not None
    m2 = Node(cfg, "m2", store).start()
    nodes.append(m2)
    try:
        await until(lambda: m2.agent.role is Role.STANDBY and ("c1", "m2") in store.nodes, what="m2 a live standby")
        read = len(m1_store.reads)
        await until(lambda: len(m1_store.reads) > read, 5, "a control read of m1")  # the next is 2 s away
        assert await store.request_switchover("c1", "m2", 0, "op@test")
        requested = boottime()
        assert await wake_peers(cfg, HintKind.CONTROL) == 1
        await until(lambda: any(e.kind == EventKind.HANDOVER for e in store.events), 3, "m1 to hand over")
        handed = store.event_times[[e.kind for e in store.events].index(EventKind.HANDOVER)]
        print(f"switchover requested -> handed over: {handed - requested:.3f}s (the next control read was 2 s away)")
        assert handed - requested < 0.3
        await until(lambda: m2.agent.role is Role.ACTIVE, 5, "m2 to serve")
    finally:
        listener.close()


async def test_a_flood_of_hints_causes_at_most_one_extra_read_per_interval_and_sender(
    store: MemoryLeaseStore, port: int, nodes: list[Node]
) -> None:
    cfg = loopback_config(port, **SLOW)
    m1, m2, m2_store, listener = await active_and_listening_standby(cfg, store, nodes)
    try:
        await until(lambda: m2.agent.role is Role.STANDBY, what="m2 standby")
        before, began = len(m2_store.reads), time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(300):  # from m1 and from "a command", as fast as they go, with a forged kind mix
                s.sendto(encode(Hint("c1", ("m1", COMMAND_SENDER)[i % 2], HintKind(1 + i % 3))), ("127.0.0.1", port))
                if i % 30 == 0:
                    await asyncio.sleep(0.01)
        await until(lambda: count(m2.agent.metrics, "fos_wake_hints_received") == 300, 5, "the flood to arrive")
        await asyncio.sleep(2 * HINT_INTERVAL_S)  # the deferred wake-ups fall due
        lasted = time.monotonic() - began
        extra = len(m2_store.reads) - before
        allowed = 2 * (lasted / HINT_INTERVAL_S + 2) + lasted / 2 + 1  # two senders, plus m2's own polls
        print(f"300 hints over {lasted:.3f}s: {extra} reads (allowed {allowed:.0f})")
        assert 2 <= extra <= allowed
        assert m1.agent.role is Role.ACTIVE and m2.agent.role is Role.STANDBY  # hints decide nothing
    finally:
        listener.close()


async def test_a_fail_back_request_wakes_the_holder_at_once(
    store: MemoryLeaseStore, port: int, nodes: list[Node]
) -> None:
    cfg = loopback_config(port, **SLOW, cluster={"failback": "auto", "failback_delay": 0}, priorities=(10, 0))
    m2 = Node(cfg, "m2", store).start()  # the lower priority serves first
    nodes.append(m2)
    await until(lambda: m2.agent.role is Role.ACTIVE, what="m2 active")
    listener = await start_listener(cfg, "m2", m2.agent.wake, m2.agent.metrics)
    assert listener is not None
    m1 = Node(cfg, "m1", store)
    m1.agent.waker = Waker(cfg, "m1", m1.agent.metrics)
    nodes.append(m1.start())
    try:
        await until(lambda: EventKind.HANDOVER in [e.kind for e in store.events], 15, "m2 to hand the role back")
        at = {e.kind: t for e, t in zip(store.events, store.event_times, strict=True)}
        took = at[EventKind.HANDOVER] - at[EventKind.SWITCHOVER_REQUESTED]
        print(f"fail-back requested -> handed over: {took:.3f}s (the holder's next control read: within 2 s)")
        assert took < 0.3
        assert count(m2.agent.metrics, "fos_wake_hints_received") >= 1
    finally:
        listener.close()


async def test_a_hint_during_a_holders_control_read_makes_it_read_again_right_after(
    store: MemoryLeaseStore, nodes: list[Node]
) -> None:
    """The running read may have been answered before the command's write: a hint that came meanwhile is not lost
    (it gets a read of its own as soon as the running one ended), nor does it start a second read alongside."""
    m1_store = CountingStore(store, delay=0.3)
    m1 = Node(config(**SLOW), "m1", m1_store).start()
    nodes.append(m1)
    await until(lambda: m1.agent.role is Role.ACTIVE, 5, "m1 active")
    await until(lambda: m1_store.running == 0, 5, "no read running")
    began = len(m1_store.began)
    await until(lambda: len(m1_store.began) > began, 5, "a control read to begin")  # the next: 2 s later
    assert m1_store.running == 1  # it runs (0.3 s)
    ended = len(m1_store.reads)
    m1.agent.wake.set()  # as the listener does on a hint
    await until(lambda: len(m1_store.began) > began + 1, 1.5, "another read")  # not 2 s later
    assert len(m1_store.reads) == ended + 1 and m1_store.running == 1  # not alongside: the first read had ended
    assert m1_store.began[-1] - m1_store.reads[-1] < 0.1  # and right after it


# ---- review findings (h-rev2) -----------------------------------------------------------------------------------


async def test_a_host_without_ipv6_still_listens_on_ipv4(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with ipv6.disable=1 refuses AF_INET6 sockets (EAFNOSUPPORT) at socket(), not at bind():
    the agent must still start, listening on IPv4 (hints are an optimisation, never a reason not to start)."""
    import errno

    import agent.wake as wake_module

    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(wake_module.socket, "socket", no_ipv6)
    cfg = loopback_config(port)
    wake = asyncio.Event()
    listener = await start_listener(cfg, "m2", wake, Metrics())  # raised OSError: `fos run` died at its start
    monkeypatch.undo()
    assert listener is not None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(encode(Hint("c1", "m1", HintKind.RELEASED)), ("127.0.0.1", port))
        await asyncio.wait_for(wake.wait(), 2)
    finally:
        listener.close()


async def test_a_flood_forging_every_known_sender_wakes_the_agent_at_most_once_per_interval_in_all() -> None:
    """The sender's name is not authenticated (anyone on the LAN can put any node's name, or the command's, in a
    datagram; the source address is not even looked at): a per-name allowance lets one attacker multiply the extra
    database reads by the number of accepted names (20/s per name: 40/s on each agent of a pair, 20 x nodes in a
    larger cluster). A gate over all senders keeps a real hint (delayed by at most one interval, never lost) and
    bounds a flood at one read per interval."""

    wake, stop = asyncio.Event(), asyncio.Event()
    listener = WakeListener("c1", frozenset({COMMAND_SENDER, "m1"}), wake, Metrics())
    wake_ups = 0

    async def consumer() -> None:  # as the standby's loop: one read per wake-up
        nonlocal wake_ups
        while not stop.is_set():
            await wait_either(stop, wake, 10)
            if wake.is_set():
                wake.clear()
                wake_ups += 1

    task = asyncio.create_task(consumer())
    forged = [encode(Hint("c1", name, HintKind.CONTROL)) for name in (COMMAND_SENDER, "m1")]
    began = time.monotonic()
    i = 0
    while time.monotonic() - began < 0.5:  # half a second of a flood through the accepted names, their gates
        late = time.monotonic() - began < HINT_INTERVAL_S / 2  # out of phase (the 2nd starts half an interval late)
        listener.datagram_received(forged[0 if late else i % 2], ("192.0.2.66", 4242))
        i += 1
        if i % 10 == 0:
            await asyncio.sleep(0.001)
    await asyncio.sleep(2 * HINT_INTERVAL_S)
    stop.set()
    await task
    lasted = time.monotonic() - began
    allowed = lasted / HINT_INTERVAL_S + 2
    print(f"{i} forged hints over {lasted:.2f}s naming 2 senders: {wake_ups} wake-ups (one gate: {allowed:.0f})")
    assert wake_ups <= allowed


class FailingStore(CountingStore):
    """A database that refuses every lease read at once (down, or a login refused), counting the attempts."""

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        from lease import StoreUnavailable

        self.began.append(time.monotonic())
        raise StoreUnavailable("connection refused")


async def test_a_standby_whose_database_fails_is_not_made_to_retry_by_hints(
    store: MemoryLeaseStore, nodes: list[Node]
) -> None:
    """After a failed read the standby waits its poll before calling a database that does not answer (as the
    holder reads no control state while its renewals fail): a hint cuts that wait short, so a flood makes a
    standby hammer a down database (or stack up calls into a hung one) at the gate's rate instead of heartbeat/2."""
    failing = FailingStore(store)
    m2 = Node(config(**SLOW), "m2", failing).start()  # poll 2 s
    nodes.append(m2)
    await until(lambda: len(failing.began) >= 1, 5, "m2's first read")
    await asyncio.sleep(0.05)
    before = len(failing.began)
    for _ in range(20):  # 1 s of hints from one sender, at the gate's rate (what the listener does)
        m2.agent.wake.set()
        await asyncio.sleep(HINT_INTERVAL_S)
    attempts = len(failing.began) - before
    print(f"a 1 s flood at the gate's rate: {attempts} reads of a failing database (poll: one per 2 s)")
    assert attempts <= 1


async def test_a_flood_of_hints_after_a_step_down_never_brings_the_acquisition_before_the_hold_off(
    store: MemoryLeaseStore, nodes: list[Node]
) -> None:
    """A node that stepped down for an application failure holds off (application.hold_off) even though the lease
    is free and hints keep waking it: each wake-up reads, and the read's plan still says wait."""
    m1 = Node(config(**SLOW, hold_off=1.5), "m1", store).start()  # alone: nobody else takes the released lease
    nodes.append(m1)
    await until(lambda: m1.agent.role is Role.ACTIVE, 5, "m1 active")
    m1.app.crash()
    await until(lambda: any(e.kind == EventKind.RELEASED for e in store.events), 5, "m1 to release")
    released = store.event_times[[e.kind for e in store.events].index(EventKind.RELEASED)]
    while boottime() - released < 2.0:  # hints at the gate's rate through the hold-off and past it
        m1.agent.wake.set()
        await asyncio.sleep(HINT_INTERVAL_S)
    await until(lambda: m1.agent.role is Role.ACTIVE, 5, "m1 active again")
    acquired = [t for e, t in zip(store.events, store.event_times, strict=True) if e.kind == EventKind.ACQUIRED]
    print(f"released -> acquired again: {acquired[-1] - released:.3f}s (hold_off 1.5 s, hinted every 50 ms)")
    assert acquired[-1] - released >= 1.5 - 0.05


class ReadsFailingLater(CountingStore):
    """Lease reads fail at once (a read-only problem: a lock, a replica lagging, a permission) once `failing`
    is set; renewals still succeed."""

    failing = False

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failing:
            return await super().read(*args, **kwargs)
        from lease import StoreUnavailable

        self.began.append(time.monotonic())
        raise StoreUnavailable("the read timed out")


async def test_a_holder_whose_control_reads_fail_is_not_made_to_retry_them_by_hints(
    store: MemoryLeaseStore, nodes: list[Node]
) -> None:
    """A failed control read reads as "nothing to do" and the next comes half a heartbeat later; a hint (carried
    over by `hinted`) makes it come at once instead, so a flood makes a holder call a database whose reads fail at
    the gate's rate (20/s) instead of about twice a heartbeat. The standby's equivalent is fixed on h-rev2
    (Agent._pause_after_failure); the holder's needs read_as_holder to say that its read failed."""
    counting = ReadsFailingLater(store)
    m1 = Node(config(**SLOW), "m1", counting).start()  # heartbeat 4 s: control reads every 2 s
    nodes.append(m1)
    await until(lambda: m1.agent.role is Role.ACTIVE, 5, "m1 active")
    counting.failing = True
    before = len(counting.began)
    for _ in range(20):  # 1 s of hints at the gate's rate
        m1.agent.wake.set()
        await asyncio.sleep(HINT_INTERVAL_S)
    attempts = len(counting.began) - before
    print(f"a 1 s flood at the gate's rate: {attempts} failing control reads (timer: one per 2 s)")
    assert m1.agent.role is Role.ACTIVE
    assert attempts <= 2


@pytest.mark.parametrize(("hints", "per_heartbeat"), [(False, 2), (True, 1)])
async def test_an_idle_holder_reads_its_control_state_once_a_heartbeat_with_hints_on_and_twice_with_them_off(
    store: MemoryLeaseStore, nodes: list[Node], hints: bool, per_heartbeat: int
) -> None:
    """With a hint listener up a command's request wakes the holder at once, so between renewals it need not read
    again (one read a heartbeat less for an idle holder, issue #14's footprint); with wake_port = 0 (no listener,
    as when its port is taken) it reads half a heartbeat after each read too, so that a request is seen within half
    a heartbeat without hints."""
    heartbeat = 0.4
    cfg = loopback_config(free_udp_port() if hints else 0, ttl=1.6, heartbeat=heartbeat)
    counting = CountingStore(store)
    m1 = Node(cfg, "m1", counting).start()
    nodes.append(m1)
    listener = await start_listener(cfg, "m1", m1.agent.wake, m1.agent.metrics)  # None with wake_port 0
    m1.agent.hints_heard = listener is not None  # as service.serve sets it
    await until(lambda: m1.agent.role is Role.ACTIVE, 5, "m1 active")
    await asyncio.sleep(heartbeat)  # (settled: the promotion's reads are behind it) not a condition: a rate is measured
    before = len(counting.reads)
    beats = 6
    await asyncio.sleep(beats * heartbeat)
    reads = len(counting.reads) - before
    print(f"hints {'on' if hints else 'off'}: {reads} control reads in {beats} heartbeats")
    if listener is not None:
        listener.close()
    assert per_heartbeat * beats - 2 <= reads <= per_heartbeat * beats + 1
