"""Runs inside a test host: print every ARP frame and ICMPv6 neighbour solicitation / advertisement that reaches
`eth0`, one line each, `<arrival, CLOCK_REALTIME, stamped by the kernel> <kind> <sender MAC>`, kind one of arp,
arp-probe (sender IP 0.0.0.0), ns, na. Prints "ready" once listening. Runs until killed.

    python -m tests.support.linkwatch [eth0]
"""

from __future__ import annotations

import socket
import struct
import sys

from netops.arp import mac_text, parse_arp

ETH_P_ALL = 0x0003
ETH_P_IPV6 = 0x86DD
SO_TIMESTAMPNS = 35
IPPROTO_ICMPV6 = 58
KINDS = {135: "ns", 136: "na"}


def classify(frame: bytes) -> str | None:
    arp = parse_arp(frame)
    if arp is not None:
        return "arp-probe" if arp.sender_ip == "0.0.0.0" else "arp"
    if len(frame) > 54 and struct.unpack("!H", frame[12:14])[0] == ETH_P_IPV6 and frame[20] == IPPROTO_ICMPV6:
        return KINDS.get(frame[54])
    return None


def main() -> None:
    ifname = sys.argv[1] if len(sys.argv) > 1 else "eth0"
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    print("ready", flush=True)
    while True:
        frame, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        kind = classify(frame)
        if kind is None:
            continue
        stamp = next(
            (
                sec + nsec / 1e9
                for level, typ, data in ancillary
                if (level, typ) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)
                for sec, nsec in [struct.unpack("qq", data[:16])]
            ),
            0.0,
        )
        print(f"{stamp:.6f} {kind} {mac_text(frame[6:12])}", flush=True)


if __name__ == "__main__":
    main()
