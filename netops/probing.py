"""The probe loop shared by the ARP and NDP conflict probes: send `probes` requests spread over `timeout`,
and hand every packet that arrives meanwhile to `answer`, which returns who answered (or None)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any


def probe_loop(
    sock: socket.socket,
    send: Callable[[], Any],
    answer: Callable[[bytes, Any], str | None],
    timeout: float,
    probes: int,
) -> str | None:
    deadline = time.monotonic() + timeout
    gap = timeout / max(1, probes)
    next_probe, left = time.monotonic(), probes
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        if left and now >= next_probe:
            send()
            left -= 1
            next_probe = now + gap
        wait = min(deadline, next_probe if left else deadline) - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, wait))
        if ready:
            packet, addr = sock.recvfrom(2048)
            who = answer(packet, addr)
            if who:
                return who
