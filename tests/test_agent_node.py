"""Which node is this machine: --node, hostname, or a node URL naming a local address."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, parse
from agent.node import select_node

CFG = parse(
    {
        "cluster": {"name": "c", "address_driver": "none"},
        "nodes": [{"name": "m1", "url": "http://10.0.0.1:8080/"}, {"name": "m2", "url": "http://10.0.0.2:8080/"}],
        "database": {"dsn": "x"},
    }
)


def test_explicit_node_wins() -> None:
    assert select_node(CFG, "m2", hostname="m1", addresses=set()).name == "m2"


def test_unknown_explicit_node_is_refused_with_the_names() -> None:
    with pytest.raises(ConfigError, match="node 'm3' is not in"):
        select_node(CFG, "m3")


def test_hostname_or_its_short_form_selects_the_node() -> None:
    assert select_node(CFG, None, hostname="m2.example.com", addresses=set()).name == "m2"


def test_a_local_address_in_a_node_url_selects_the_node() -> None:
    assert select_node(CFG, None, hostname="box", addresses={"127.0.0.1", "10.0.0.2"}).name == "m2"


def test_no_match_asks_for_node() -> None:
    with pytest.raises(ConfigError, match="pass --node"):
        select_node(CFG, None, hostname="box", addresses={"127.0.0.1"})
