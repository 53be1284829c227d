"""IPv6 neighbour discovery messages we build and parse."""

from __future__ import annotations

from netops.ndp import NA_FLAG_OVERRIDE, ND_NEIGHBOR_SOLICIT, advert, parse_advert, solicit, solicited_node

MAC = "02:00:00:00:00:02"


def test_unsolicited_advert_overrides_and_carries_our_mac() -> None:
    na = advert(MAC, "fd00::100")
    assert na[4] & NA_FLAG_OVERRIDE
    assert parse_advert(na) == ("fd00::100", MAC)


def test_solicitation_targets_the_address_and_is_not_an_advert() -> None:
    ns = solicit(MAC, "fd00::100")
    assert ns[0] == ND_NEIGHBOR_SOLICIT and parse_advert(ns) is None


def test_solicited_node_group_uses_the_low_24_bits() -> None:
    assert solicited_node("fd00:213::1:abcd") == "ff02::1:ff01:abcd"
