"""The probe loop shared by the ARP and NDP conflict probes: send `probes` requests spread over `timeout`,
and hand every packet that arrives meanwhile to `answer`, which returns who answered (or None). A set `stop`
event ends the loop within STOP_POLL_S (the loop then returns None)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

STOP_POLL_S = 0.02


def probe_loop(
    sock: socket.socket,
    send: Callable[[], Any],
    answer: Callable[[bytes, Any], str | None],
    timeout: float,
    probes: int,
    stop: threading.Event | None = None,
) -> str | None:
    deadline = time.monotonic() + timeout
    gap = timeout / max(1, probes)
    next_probe, left = time.monotonic(), probes
    while True:
        now = time.monotonic()
        if now >= deadline or (stop is not None and stop.is_set()):
            return None
        if left and now >= next_probe:
            send()
            left -= 1
            next_probe = now + gap
        wait = min(deadline, next_probe if left else deadline) - time.monotonic()
        if stop is not None:
            wait = min(wait, STOP_POLL_S)
        ready, _, _ = select.select([sock], [], [], max(0.0, wait))
        if ready:
            packet, addr = sock.recvfrom(2048)
            who = answer(packet, addr)
            if who:
                return who
