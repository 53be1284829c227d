"""Sending wake-up hints (agent/wake_send.py): port 0 sends nothing, peers whose names do not resolve are
skipped (logged once), a hint never waits for a resolution, a literal IP needs no thread, and a command exits in
time even when the resolver hangs. The round trip to a listener is in tests/test_agent_wake.py."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.metrics import Metrics
from agent.wake import HintKind, start_listener
from agent.wake_send import RESOLVE_TIMEOUT_S, Waker, lookup, wake_peers
from tests.test_agent_wake import free_udp_port, loopback_config


@pytest.fixture
def port() -> int:
    return free_udp_port()


async def test_wake_port_zero_neither_listens_nor_sends() -> None:
    cfg = loopback_config(0)
    assert await start_listener(cfg, "m2", asyncio.Event(), Metrics()) is None
    waker = Waker(cfg, "m1", Metrics())
    assert waker.hosts == [] and await waker.wake_peers(HintKind.RELEASED) == 0
    assert await wake_peers(cfg, HintKind.CONTROL) == 0


async def test_a_peer_whose_name_does_not_resolve_gets_no_hint_and_is_logged_once(port: int) -> None:
    cfg = loopback_config(port)
    without_url = [dataclasses.replace(cfg.nodes[1], name=name, url=None) for name in ("m2", "no-such-host.invalid")]
    cfg = dataclasses.replace(cfg, nodes=(cfg.nodes[0], *without_url))
    waker = Waker(cfg, "m1", Metrics())
    with capture_logs() as logs:
        assert await waker.wake_peers(HintKind.RELEASED) == 0
        waker.hint(HintKind.RELEASED)  # again, fire and forget: resolved again in a task, still nothing sent
        await waker.close()
    unresolved = sorted(e["host"] for e in logs if e["event"] == "wake_peer_unresolved")
    assert unresolved == ["m2", "no-such-host.invalid"]  # each once (node m2 has no url, its name does not resolve)


async def test_hint_never_waits_for_a_name_to_resolve(port: int) -> None:
    cfg = loopback_config(port)
    waker = Waker(cfg, "m1", Metrics())
    began = time.monotonic()
    waker.hint(HintKind.RELEASED)  # nothing resolved yet: the send moves to a task
    assert time.monotonic() - began < 0.005
    await waker.close()


async def test_lookup_takes_a_literal_ip_without_a_thread_and_a_name_in_one() -> None:
    threads = threading.active_count()
    assert await lookup("127.0.0.1", 8470) == [(socket.AF_INET, ("127.0.0.1", 8470))]
    assert await lookup("::1", 8470) == [(socket.AF_INET6, ("::1", 8470, 0, 0))]
    assert threading.active_count() == threads
    assert (socket.AF_INET, ("127.0.0.1", 8470)) in await lookup("localhost", 8470)  # /etc/hosts
    with pytest.raises(OSError):
        await lookup("no-such-host.invalid", 8470)


def test_a_command_does_not_wait_for_a_resolver_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's name whose lookup never ends: the command gives up after RESOLVE_TIMEOUT_S and exits; nothing
    (no executor thread) holds its exit."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            return real(host, port, *args, **kwargs)  # the literal fast path: a name fails it at once
        release.wait(30)  # a resolver that does not answer
        raise socket.gaierror("timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    cfg = loopback_config(free_udp_port())
    cfg = dataclasses.replace(
        cfg, nodes=tuple(dataclasses.replace(n, url="http://peer.example:8080/") for n in cfg.nodes)
    )
    began = time.monotonic()
    try:
        assert asyncio.run(wake_peers(cfg, HintKind.CONTROL)) == 0
        assert time.monotonic() - began < RESOLVE_TIMEOUT_S + 0.5
    finally:
        release.set()


async def test_hint_never_raises_whatever_sending_does(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The let-go and the fail-back send hints on their way: an error in sending must not reach them."""
    waker = Waker(loopback_config(port), "m1")

    def broken(*args: Any, **kwargs: Any) -> int:
        raise ValueError("a hint that cannot be encoded")

    monkeypatch.setattr(waker, "_send", broken)
    with capture_logs() as logs:
        waker.hint(HintKind.RELEASED)  # no exception
    assert [e["event"] for e in logs] == ["wake_hint_failed"]
    await waker.close()
