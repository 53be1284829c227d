"""A LAN of test hosts in network namespaces: a bridge in its own namespace, each host in a namespace with a
veth to that bridge, addresses from one private /24 (and a ULA /64) that exist only there. Nothing is attached
to the root namespace and there is no default route, so no test traffic can leave.

Names carry a per-run prefix with the creating pid, so two runs cannot collide and leftovers of a crashed run
are recognised (its pid is gone) and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "fost"
SUBNET = "10.213.0"
SUBNET6 = "fd00:213::"


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


def remove_leftovers() -> list[str]:
    """Delete namespaces of earlier runs whose creating process no longer exists."""
    removed = []
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)x[0-9a-f]+-.+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    ip6: str
    lan: Lan
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv(argv), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    @property
    def mac(self) -> str:
        return str(json.loads(self.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"])

    def addresses(self) -> list[str]:
        doc = json.loads(self.run("ip", "-j", "addr", "show", "eth0").stdout)
        return [a["local"] for a in doc[0].get("addr_info", [])]

    def has_address(self, ip: str) -> bool:
        return ip in self.addresses()

    def neighbour_mac(self, ip: str) -> str | None:
        """The link-layer address this host has cached for `ip` (ARP for IPv4, NDP for IPv6), if usable."""
        doc = json.loads(self.run("ip", "-j", "neigh", "show", "to", ip, "dev", "eth0").stdout or "[]")
        for entry in doc:
            if entry.get("lladdr") and "FAILED" not in entry.get("state", []):
                return str(entry["lladdr"])
        return None

    def cut_link(self) -> None:
        sh("ip", "-n", self.lan.bridge_ns, "link", "set", self.lan.port(self.name), "down")

    def restore_link(self) -> None:
        sh("ip", "-n", self.lan.bridge_ns, "link", "set", self.lan.port(self.name), "up")

    def netem(self, loss_pct: float = 0, delay_ms: float = 0) -> None:
        self.run(
            "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", f"{loss_pct}%", "delay", f"{delay_ms}ms"
        )

    def clear_netem(self) -> None:
        self.run("tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    def stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        self.procs.clear()


class Lan:
    def __init__(self) -> None:
        remove_leftovers()
        self.prefix = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        self._next = 1
        sh("ip", "netns", "add", self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")

    def port(self, host: str) -> str:
        return f"p-{host}"[:15]

    def add_host(self, name: str) -> Host:
        ns = f"{self.prefix}-{name}"
        n = self._next
        self._next += 1
        host = Host(name, ns, f"{SUBNET}.{n}", f"{SUBNET6}{n}", self)
        sh("ip", "netns", "add", ns)
        sh(
            "ip",
            "-n",
            self.bridge_ns,
            "link",
            "add",
            self.port(name),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", self.bridge_ns, "link", "set", self.port(name), "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_processes()
        # Whatever else still runs in a host (an app a test's agent left behind, a server) goes too.
        for ns in [h.ns for h in self.hosts.values()] + [self.bridge_ns]:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
        for host in self.hosts.values():
            sh("ip", "netns", "del", host.ns, check=False)
        sh("ip", "netns", "del", self.bridge_ns, check=False)


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until `condition()` is truthy; return its value, or fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def holds_for(condition: Callable[[], Any], duration: float, interval: float = 0.1, what: str = "condition") -> int:
    """Poll `condition()` for `duration` seconds and fail at the first falsy answer (an observation window: what
    must *stay* true, e.g. a standby that must not take over); return how many times it was checked."""
    deadline = time.monotonic() + duration
    checks = 0
    while True:
        if not condition():
            raise AssertionError(f"{what} stopped holding after {checks} checks")
        checks += 1
        if time.monotonic() >= deadline:
            return checks
        time.sleep(interval)
