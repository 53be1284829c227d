"""IPv6 counterparts of arp.py: unsolicited neighbour advertisements to announce the common IP, and a neighbour
solicitation probe to find another owner. ICMPv6 raw sockets; the kernel fills in the checksum."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from typing import Any

from .arp import mac_bytes, mac_text
from .probing import probe_loop

ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 135, 136
OPT_SOURCE_LLA, OPT_TARGET_LLA = 1, 2
NA_FLAG_OVERRIDE = 0x20
ALL_NODES = "ff02::1"


def solicited_node(ip: str) -> str:
    low = ipaddress.IPv6Address(ip).packed[-3:]
    return str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low))


def advert(mac: str, ip: str) -> bytes:
    """Unsolicited NA: override flag set, so neighbours replace a cached link-layer address at once."""
    head = struct.pack("!BBHB3x", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE)
    return head + ipaddress.IPv6Address(ip).packed + struct.pack("!BB", OPT_TARGET_LLA, 1) + mac_bytes(mac)


def solicit(mac: str, ip: str) -> bytes:
    head = struct.pack("!BBH4x", ND_NEIGHBOR_SOLICIT, 0, 0)
    return head + ipaddress.IPv6Address(ip).packed + struct.pack("!BB", OPT_SOURCE_LLA, 1) + mac_bytes(mac)


def parse_advert(payload: bytes) -> tuple[str, str | None] | None:
    """(target, target link-layer address or None) of an NA; None for any other ICMPv6 message."""
    if len(payload) < 24 or payload[0] != ND_NEIGHBOR_ADVERT:
        return None
    target = str(ipaddress.IPv6Address(payload[8:24]))
    opts = payload[24:]
    while len(opts) >= 8:
        kind, length = opts[0], opts[1] * 8
        if length == 0:
            break
        if kind == OPT_TARGET_LLA and length >= 8:
            return target, mac_text(opts[2:8])
        opts = opts[length:]
    return target, None


def _icmp6_socket(ifname: str, ifindex: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
    # Our own solicitation must not come back to our own kernel, which would answer it for an address it holds.
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    return sock


def send_unsolicited_na(
    ifname: str, ifindex: int, mac: str, ip: str, count: int, interval: float, stop: threading.Event | None = None
) -> int:
    """Send `count` unsolicited NAs `interval` apart to all nodes; return how many were sent. Blocking; run it in
    a thread. Setting `stop` ends it before the next packet: the wait between packets wakes up at once."""
    stop = stop or threading.Event()
    sent = 0
    with _icmp6_socket(ifname, ifindex) as sock:
        for i in range(count):
            if stop.is_set():
                break
            sock.sendto(advert(mac, ip), (ALL_NODES, 0, 0, ifindex))
            sent += 1
            if i + 1 < count and stop.wait(interval):
                break
    return sent


def ns_probe(
    ifname: str,
    ifindex: int,
    mac: str,
    ip: str,
    timeout: float,
    probes: int = 2,
    stop: threading.Event | None = None,
) -> str | None:
    """Ask the solicited-node group who has `ip`; return another owner's MAC (or its address if it gave no
    link-layer option), else None (also when `stop` is set: it gives up at once). Blocking; run it in a thread."""
    own = mac.lower()
    target = str(ipaddress.IPv6Address(ip))

    def answer(payload: bytes, addr: Any) -> str | None:
        parsed = parse_advert(payload)
        if parsed and parsed[0] == target and parsed[1] != own:
            return parsed[1] or str(addr[0])
        return None

    with _icmp6_socket(ifname, ifindex) as sock:
        destination = (solicited_node(ip), 0, 0, ifindex)
        return probe_loop(sock, lambda: sock.sendto(solicit(mac, ip), destination), answer, timeout, probes, stop)
