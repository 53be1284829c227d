"""IPv4 announcements and conflict probes with ARP frames on a raw AF_PACKET socket we own (no `arping`
process to spawn, find or parse). Needs CAP_NET_RAW."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from .probing import probe_loop

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def arp_frame(op: int, eth_dst: bytes, sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str) -> bytes:
    eth = eth_dst + sender_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
    arp += sender_mac + socket.inet_aton(sender_ip) + target_mac + socket.inet_aton(target_ip)
    return eth + arp


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


def parse_arp(frame: bytes) -> ArpPacket | None:
    """Parse an Ethernet ARP frame for IPv4; None for anything else."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return ArpPacket(
        op,
        mac_text(frame[22:28]),
        socket.inet_ntoa(frame[28:32]),
        mac_text(frame[32:38]),
        socket.inet_ntoa(frame[38:42]),
    )


def gratuitous_frames(mac: str, ip: str) -> list[bytes]:
    """Both forms, since some switches and hosts honour only one: a broadcast request and a broadcast reply,
    each with sender and target IP set to the announced address."""
    m = mac_bytes(mac)
    return [
        arp_frame(ARP_REQUEST, BROADCAST, m, ip, ZERO_MAC, ip),
        arp_frame(ARP_REPLY, BROADCAST, m, ip, BROADCAST, ip),
    ]


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((ifname, ETH_P_ARP))
    return sock


def send_gratuitous_arp(
    ifname: str, mac: str, ip: str, count: int, interval: float, stop: threading.Event | None = None
) -> int:
    """Send `count` rounds of gratuitous ARP `interval` apart; return the number of frames sent. Blocking; run it
    in a thread. Setting `stop` ends it before the next frame: the wait between rounds wakes up at once."""
    stop = stop or threading.Event()
    sent = 0
    with _packet_socket(ifname) as sock:
        for i in range(count):
            for frame in gratuitous_frames(mac, ip):
                if stop.is_set():
                    return sent
                sock.send(frame)
                sent += 1
            if i + 1 < count and stop.wait(interval):
                break
    return sent


def arp_probe(
    ifname: str, mac: str, ip: str, timeout: float, probes: int = 2, stop: threading.Event | None = None
) -> str | None:
    """RFC 5227 probe: ARP requests from 0.0.0.0 asking for `ip`. Return the MAC of another host that answers
    for (or announces) the address within `timeout`, else None (also when `stop` is set: it gives up at once).
    Blocking; run it in a thread."""
    ipaddress.IPv4Address(ip)
    own = mac.lower()
    probe = arp_frame(ARP_REQUEST, BROADCAST, mac_bytes(mac), "0.0.0.0", ZERO_MAC, ip)

    def answer(frame: bytes, addr: Any) -> str | None:
        if addr[2] == PACKET_OUTGOING:
            return None
        pkt = parse_arp(frame)
        return pkt.sender_mac if pkt and pkt.sender_ip == ip and pkt.sender_mac != own else None

    with _packet_socket(ifname) as sock:
        return probe_loop(sock, lambda: sock.send(probe), answer, timeout, probes, stop)
