"""ARP frames: what we send parses back to what we meant, and foreign frames are ignored."""

from __future__ import annotations

from netops.arp import ARP_REPLY, ARP_REQUEST, BROADCAST, ZERO_MAC, arp_frame, gratuitous_frames, mac_bytes, parse_arp

MAC = "02:00:00:00:00:01"


def test_gratuitous_arp_sends_a_request_and_a_reply_both_naming_the_address() -> None:
    request, reply = (parse_arp(f) for f in gratuitous_frames(MAC, "10.0.0.5"))
    assert request is not None and reply is not None
    assert (request.op, reply.op) == (ARP_REQUEST, ARP_REPLY)
    for pkt in (request, reply):
        assert pkt.sender_mac == MAC and pkt.sender_ip == "10.0.0.5" and pkt.target_ip == "10.0.0.5"
    assert all(f[:6] == BROADCAST for f in gratuitous_frames(MAC, "10.0.0.5"))


def test_probe_frame_has_a_zero_sender_address() -> None:
    pkt = parse_arp(arp_frame(ARP_REQUEST, BROADCAST, mac_bytes(MAC), "0.0.0.0", ZERO_MAC, "10.0.0.9"))
    assert pkt is not None and pkt.sender_ip == "0.0.0.0" and pkt.target_ip == "10.0.0.9"


def test_non_arp_and_short_frames_are_ignored() -> None:
    frame = gratuitous_frames(MAC, "10.0.0.5")[0]
    assert parse_arp(frame[:30]) is None
    assert parse_arp(frame[:12] + b"\x08\x00" + frame[14:]) is None
