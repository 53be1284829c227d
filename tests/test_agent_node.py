"""Which node is this machine: --node, hostname, or a node URL naming a local address."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from agent.config import ConfigError, parse
from agent.node import identifies, resolve_host, select_node

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


HOSTS = {"m1.lan.test": {"10.0.0.1"}, "m2.lan.test": {"10.0.0.2", "fd00::2"}, "localhost": {"127.0.0.1", "::1"}}


def named(*urls: str) -> Any:
    return parse(
        {
            "cluster": {"name": "c", "address_driver": "none"},
            "nodes": [{"name": f"n{i}", "url": url} for i, url in enumerate(urls, 1)],
            "database": {"dsn": "x"},
        }
    )


def fake_resolver(host: str) -> set[str]:  # the selection rule only; resolve_host itself is tested below
    return HOSTS[host] if host in HOSTS else resolve_host(host) if host[0].isdigit() else set()


def test_a_host_name_in_a_node_url_is_resolved_to_select_the_node() -> None:
    cfg = named("http://m1.lan.test:8080/", "http://m2.lan.test:8080/")
    assert select_node(cfg, None, hostname="box", addresses={"fd00::2"}, resolve=fake_resolver).name == "n2"


def test_loopback_never_identifies_a_machine() -> None:
    cfg = named("http://localhost:8080/", "http://m2.lan.test:8080/")
    with pytest.raises(ConfigError, match="pass --node"):
        select_node(cfg, None, hostname="box", addresses={"127.0.0.1", "::1"}, resolve=fake_resolver)
    cfg = named("http://127.0.0.1:8080/", "http://m2.lan.test:8080/")
    with pytest.raises(ConfigError, match="pass --node"):
        select_node(cfg, None, hostname="box", addresses={"127.0.0.1"})


def test_two_node_urls_naming_this_machine_is_refused() -> None:
    cfg = named("http://m2.lan.test:8080/", "http://10.0.0.2:8081/")
    with pytest.raises(ConfigError, match="n1, n2 all name addresses of this machine"):
        select_node(cfg, None, hostname="box", addresses={"10.0.0.2"}, resolve=fake_resolver)


def test_resolve_host_uses_this_machines_resolver_for_local_names() -> None:
    assert "127.0.0.1" in resolve_host("localhost")
    assert resolve_host("10.0.0.7") == {"10.0.0.7"}
    assert resolve_host("::1") == {"::1"}
    assert resolve_host(socket.gethostname())  # the machine's own name resolves locally (e.g. /etc/hosts)


def test_a_url_naming_this_machines_own_hostname_selects_its_node() -> None:
    own = next(iter(identifies(resolve_host(socket.gethostname()))), None)
    if own is None:  # e.g. /etc/hosts maps it to 127.0.x.x; the namespace test in test_agent_cli covers the rule
        pytest.skip("this machine's hostname resolves only to loopback")
    cfg = named("http://localhost:8080/", f"http://{socket.gethostname()}:8080/")
    assert select_node(cfg, None, hostname="box", addresses={own}).name == "n2"
