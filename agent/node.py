"""Which [[nodes]] entry is this machine: --node, else the hostname, else the node whose URL names a local
address."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from netops import list_interfaces

from .config import Config, ConfigError, NodeConfig


def local_addresses() -> set[str]:
    return {a.split("/")[0] for i in list_interfaces() for a in i.addresses}


def select_node(
    cfg: Config, name: str | None, hostname: str | None = None, addresses: set[str] | None = None
) -> NodeConfig:
    if name:
        return cfg.node(name)
    host = hostname if hostname is not None else socket.gethostname()
    for candidate in (host, host.split(".")[0]):
        for node in cfg.nodes:
            if node.name == candidate:
                return node
    local = addresses if addresses is not None else local_addresses()
    matches = []
    for node in cfg.nodes:
        url_host = urlparse(node.url).hostname if node.url else None
        if url_host:
            try:
                if str(ipaddress.ip_address(url_host)) in local:
                    matches.append(node)
            except ValueError:
                continue
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(
        f"cannot tell which node this machine is (hostname {host!r} matches no [[nodes]] name, and no node url "
        f"names a local address): pass --node with one of {cfg.node_names()}"
    )
