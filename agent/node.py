"""Which [[nodes]] entry is this machine: --node, else the hostname, else the node whose URL names a local
address (a literal IP, or a host name resolved by this machine: /etc/hosts or its resolver)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from netops import list_interfaces

from .config import Config, ConfigError, NodeConfig


def local_addresses() -> set[str]:
    """This machine's addresses; a ConfigError (asking for --node) when the kernel will not list them."""
    try:
        return {a.split("/")[0] for i in list_interfaces() for a in i.addresses}
    except Exception as exc:  # any failure here means: cannot tell
        raise ConfigError(
            f"cannot list this machine's addresses to find its node ({type(exc).__name__}): pass --node"
        ) from None


def resolve_host(host: str) -> set[str]:
    """The addresses this machine resolves `host` to (a literal IP is itself); empty if it does not resolve."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


def identifies(addresses: set[str]) -> set[str]:
    """The addresses that can tell one machine from another: loopback is every machine's, so it never does
    (a url naming localhost would otherwise select the same node on every machine)."""
    return {a for a in addresses if not ipaddress.ip_address(a).is_loopback}


def select_node(
    cfg: Config,
    name: str | None,
    hostname: str | None = None,
    addresses: set[str] | None = None,
    resolve: Callable[[str], set[str]] = resolve_host,
) -> NodeConfig:
    """--node if given; else the node named like this machine's hostname (or its short form); else the one node
    whose url's host resolves to an address of this machine. A ConfigError (naming the choices) otherwise."""
    if name:
        return cfg.node(name)
    host = hostname if hostname is not None else socket.gethostname()
    for candidate in (host, host.split(".")[0]):
        for node in cfg.nodes:
            if node.name == candidate:
                return node
    local = identifies(addresses if addresses is not None else local_addresses())
    matches = []
    for node in cfg.nodes:
        url_host = urlsplit(node.url).hostname if node.url else None
        if url_host and identifies(resolve(url_host)) & local:
            matches.append(node)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(
            f"the urls of nodes {', '.join(n.name for n in matches)} all name addresses of this machine: pass --node"
        )
    raise ConfigError(
        f"cannot tell which node this machine is (hostname {host!r} matches no [[nodes]] name, and no node url "
        f"names a local address): pass --node with one of {cfg.node_names()}"
    )


def names_this_machine(
    host: str, addresses: set[str] | None = None, resolve: Callable[[str], set[str]] = resolve_host
) -> bool:
    """`host` resolves to an address of this machine (loopback included: a url naming localhost is us too).
    Blocking (resolver, netlink): async callers run it in a worker thread."""
    resolved = resolve(host)
    if not resolved:
        return False
    if any(ipaddress.ip_address(a).is_loopback for a in resolved):
        return True
    return bool(resolved & (addresses if addresses is not None else local_addresses()))


def confirm_node(
    cfg: Config,
    name: str,
    hostname: str | None = None,
    addresses: set[str] | None = None,
    resolve: Callable[[str], set[str]] = resolve_host,
) -> NodeConfig:
    """The [[nodes]] entry `name`, only if it identifies this machine: its name is this machine's hostname (or
    its short form), or its url's host resolves to a non-loopback address of this machine. A ConfigError
    otherwise: commands that act as a node (fos mirror) must not trust --node alone."""
    node = cfg.node(name)
    host = hostname if hostname is not None else socket.gethostname()
    if name in (host, host.split(".")[0]):
        return node
    url_host = urlsplit(node.url).hostname if node.url else None
    local = identifies(addresses if addresses is not None else local_addresses())
    if url_host and identifies(resolve(url_host)) & local:
        return node
    raise ConfigError(
        f"--node {name} is not this machine (hostname {host!r}, and node {name}'s url names no address of this "
        f"machine): run this command on {name}, or set its url to an address of {name}"
    )
