"""A two-node fos cluster on the namespace test bed: m1, m2 running `fos run`, a client probing the common IP,
and the lease database (PostgreSQL in its own host `db`, or a shared SQLite file). A sampler thread records,
every ~10 ms, which node has the common IP bound, so tests can assert it was never bound on both at once."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from tests.support import dbservers
from tests.support.netns import SUBNET, Host, Lan, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIP = f"{SUBNET}.100"
WEBAPP = os.path.join(ROOT, "examples", "webapp.py")


@dataclass
class Sample:
    at: float
    holders: tuple[str, ...]


class IpSampler(threading.Thread):
    def __init__(self, hosts: list[Host], ip: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.hosts, self.ip, self.interval = hosts, ip, interval
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def run(self) -> None:
        sockets = {h.name: IPRoute(netns=h.ns) for h in self.hosts}
        try:
            while not self._halt.is_set():
                at = time.monotonic()
                holders = tuple(
                    name
                    for name, ipr in sockets.items()
                    if any(a.get("IFA_ADDRESS") == self.ip for a in ipr.get_addr(family=2))
                )
                self.samples.append(Sample(at, holders))
                self._halt.wait(self.interval)
        finally:
            for ipr in sockets.values():
                ipr.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def both_bound(self) -> list[Sample]:
        return [s for s in self.samples if len(s.holders) > 1]

    def holder_at(self, t: float) -> tuple[str, ...]:
        before = [s for s in self.samples if s.at <= t]
        return before[-1].holders if before else ()

    def last_time(self, holder: str) -> float:
        """The last sample in which `holder` had the address."""
        return max(s.at for s in self.samples if holder in s.holders)

    def first_time(self, holder: str, after: float) -> float | None:
        return next((s.at for s in self.samples if s.at >= after and holder in s.holders), None)

    def max_gap(self) -> float:
        times = [s.at for s in self.samples]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Prober:
    """The client's view: one GET of the common IP every 20 ms, recorded as (monotonic time, answer)."""

    def __init__(self, client: Host) -> None:
        self.answers: list[tuple[float, str]] = []
        self.proc = client.popen(
            [sys.executable, os.path.join(ROOT, "tests", "support", "prober.py"), VIP, "8080", "0.02"],
            stdout=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            at, answer = line.decode().split()
            self.answers.append((float(at), answer))

    def first_answer_from(self, node: str, after: float) -> float | None:
        return next((t for t, a in list(self.answers) if t >= after and a == node), None)

    def answers_after(self, after: float) -> set[str]:
        return {a for t, a in list(self.answers) if t >= after}


class Cluster:
    def __init__(
        self, lan: Lan, db_kind: str, ttl: float = 3, heartbeat: float = 1, health_interval: float = 0.2, **extra: Any
    ) -> None:
        self.health_interval = health_interval
        self.lan = lan
        self.work = tempfile.mkdtemp(prefix="fos-cluster-")
        os.chmod(self.work, 0o755)
        self.m1, self.m2, self.client = lan.add_host("m1"), lan.add_host("m2"), lan.add_host("client")
        self.db_server: dbservers.DbServer | None = None
        if db_kind == "postgresql":
            self.db = lan.add_host("db")
            self.db_server = dbservers.start_postgresql(host=self.db.ip, netns=self.db.ns)
            dsn = self.db_server.dsn(KeepaliveTime="2", KeepaliveInterval="1")
        else:
            dsn = f"Driver=SQLite3;Database={self.work}/lease.db;Timeout=500"
        self.config = os.path.join(self.work, "fos.toml")
        self._write_config(dsn, ttl, heartbeat, extra)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Any] = {}
        out = self.m1.run(sys.executable, "-m", "agent", "init-db", "--config", self.config, timeout=60)
        assert "ready" in out.stdout
        self.sampler = IpSampler([self.m1, self.m2], VIP)
        self.sampler.start()
        self.prober = Prober(self.client)

    def _write_config(self, dsn: str, ttl: float, heartbeat: float, extra: dict[str, Any]) -> None:
        app = extra.get("app", f'command = "{sys.executable} {WEBAPP} --port 8080"')
        text = f"""
[cluster]
name = "it"
common_ip = "{VIP}/24"
[[nodes]]
name = "m1"
interface = "eth0"
url = "http://{self.m1.ip}:8080/"
[[nodes]]
name = "m2"
interface = "eth0"
url = "http://{self.m2.ip}:8080/"
[database]
dsn = "{dsn}"
[lease]
ttl = {ttl}
heartbeat = {heartbeat}
min_hold = 1
[application]
{app}
stop_timeout = 3
hold_off = 5
[application.health]
http = "http://127.0.0.1:8080/health"
interval = {self.health_interval}
timeout = 0.2
failures = 2
start_grace = 15
[announce]
count = 2
interval = 0.05
[http]
listen = "0.0.0.0:8470"
"""
        with open(self.config, "w") as f:
            f.write(text)

    def host(self, name: str) -> Host:
        return {"m1": self.m1, "m2": self.m2}[name]

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.work, f"{name}.log"), "ab")  # noqa: SIM115 - closed in close()
        self.logs.setdefault(name, []).append(log)
        proc = self.host(name).popen(
            [sys.executable, "-m", "agent", "run", "--config", self.config, "--node", name, "--state-dir", self.work],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        self.agents[name] = proc
        return proc

    def status(self, name: str) -> dict[str, Any] | None:
        code = (
            f"import urllib.request;print(urllib.request.urlopen('http://{self.host(name).ip}:8470/status',"
            "timeout=0.5).read().decode())"
        )
        out = self.client.run(sys.executable, "-c", code, check=False, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def http_code(self, name: str, path: str) -> int | None:
        code = (
            "import urllib.request,urllib.error\ntry:\n"
            f" r=urllib.request.urlopen('http://{self.host(name).ip}:8470{path}',timeout=0.5);print(r.status)\n"
            "except urllib.error.HTTPError as e:\n print(e.code)"
        )
        out = self.client.run(sys.executable, "-c", code, check=False, timeout=10)
        return int(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    def role(self, name: str) -> str | None:
        doc = self.status(name)
        return None if doc is None else str(doc["role"])

    def wait_role(self, name: str, role: str, timeout: float = 30) -> float:
        start = time.monotonic()
        wait_for(lambda: self.role(name) == role, timeout, 0.05, f"{name} to be {role}")
        return time.monotonic() - start

    def active_pair(self) -> tuple[str, str]:
        """Start both, m1 first, and return (active, standby) once settled."""
        self.start("m1")
        self.wait_role("m1", "active")
        self.start("m2")
        self.wait_role("m2", "standby")
        return "m1", "m2"

    def app_pid(self, name: str) -> int | None:
        path = os.path.join(self.work, f"it-{name}.pid")
        try:
            with open(path) as f:
                return int(json.load(f)["pid"])  # agent/app.py's pidfile: {"pid", "start_time", "cmdline"}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def kill_agent(self, name: str, with_app: bool = False) -> None:
        app = self.app_pid(name)
        self.agents[name].send_signal(signal.SIGKILL)  # the agent first: it must not see its app die
        self.agents[name].wait(timeout=10)
        if with_app and app:
            with contextlib.suppress(ProcessLookupError):  # the app's keeper may have ended it already
                os.killpg(app, signal.SIGKILL)

    def cut_db(self, name: str) -> None:
        assert self.db_server is not None
        self.host(name).run("ip", "route", "add", "blackhole", f"{self.db.ip}/32")

    def restore_db(self, name: str) -> None:
        self.host(name).run("ip", "route", "del", "blackhole", f"{self.db.ip}/32", check=False)

    def log_text(self, name: str) -> str:
        path = os.path.join(self.work, f"{name}.log")
        return open(path).read() if os.path.exists(path) else ""

    def close(self) -> None:
        self.sampler.stop()
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for name in ("m1", "m2"):
            if pid := self.app_pid(name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for logs in self.logs.values():
            for log in logs:
                log.close()
        if self.db_server is not None:
            self.db_server.stop()
        shutil.rmtree(self.work, ignore_errors=True)
