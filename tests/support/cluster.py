"""A fos cluster of N nodes (two by default) on the namespace test bed: m1..mN running `fos run`, a client probing
the common IP (IPv4, or IPv6 from the LAN's ULA /64), and the lease database (PostgreSQL in its own host `db`, or a
shared SQLite file). A sampler thread records, every ~10 ms, which nodes have the common IP bound, so tests can
assert it was never bound on two at once."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.support import dbservers
from tests.support.netns import SUBNET, SUBNET6, Host, Lan, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIP = f"{SUBNET}.100"
VIP6 = f"{SUBNET6}100"
AF_INET, AF_INET6 = 2, 10
WEBAPP = os.path.join(ROOT, "examples", "webapp.py")


@dataclass
class Sample:
    at: float
    holders: tuple[str, ...]


class IpSampler:
    """Every `interval` seconds, which of `hosts` have `ip` on any interface (read over netlink, family 2 or 10),
    sampled by tests/support/ipsampler.py in a process of its own and collected here as Samples."""

    def __init__(self, hosts: list[Host], ip: str, interval: float = 0.01, family: int = AF_INET) -> None:
        self.hosts, self.ip, self.interval, self.family = hosts, ip, interval, family
        self.samples: list[Sample] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        """Start sampling; return once the first sample is in."""
        script = os.path.join(ROOT, "tests", "support", "ipsampler.py")
        hosts = [f"{h.name}={h.ns}" for h in self.hosts]
        argv = [sys.executable, script, str(self.interval), str(self.family), self.ip, *hosts]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
        self._reader.start()
        wait_for(lambda: self.samples, 10, 0.01, "the first sample of the common IP")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            at, holders = line.decode().split()
            self.samples.append(Sample(float(at), () if holders == "-" else tuple(holders.split(","))))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self._reader.is_alive():
            self._reader.join(timeout=5)

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

    def holders_after(self, after: float) -> set[str]:
        """Every node that had the address in some sample from `after` on."""
        return {h for s in list(self.samples) if s.at >= after for h in s.holders}

    def missing(self, holder: str, after: float, until: float | None = None) -> list[Sample]:
        """The samples from `after` (to `until`) in which `holder` did not have the address (a lapse)."""
        end = until if until is not None else float("inf")
        return [s for s in list(self.samples) if after <= s.at <= end and holder not in s.holders]

    def max_gap(self) -> tuple[float, float]:
        """The longest time between two samples, and when it began."""
        times = [s.at for s in list(self.samples)]
        return max(((b - a, a) for a, b in itertools.pairwise(times)), default=(0.0, 0.0))


class Prober:
    """The client's view: a GET of the common IP begun every 20 ms (each in its own thread: a hung one does not delay
    the next), recorded as (monotonic time it began, answer)."""

    def __init__(self, client: Host, ip: str = VIP) -> None:
        self.answers: list[tuple[float, str]] = []
        self.proc = client.popen(
            [sys.executable, os.path.join(ROOT, "tests", "support", "prober.py"), ip, "8080", "0.02"],
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
        """When the first attempt begun at or after `after` that `node` answered began (attempts overlap: the
        lines come in the order they ended)."""
        return min((t for t, a in list(self.answers) if t >= after and a == node), default=None)

    def answers_after(self, after: float) -> set[str]:
        return {a for t, a in list(self.answers) if t >= after}


class Cluster:
    """`nodes` agents m1..mN (not started: see start), a client probing the common IP from its own host, the lease
    database, and a sampler over every node host. `ipv6` makes the common IP fd00:213::100/64. `name` is the
    cluster's name in the config; `init_db_as` runs `fos init-db` for another cluster name instead (or for none,
    with ""), so that `fos run` finds the schema without this cluster's row. `mode="warm"` (a keyword of `extra`)
    sets application.mode."""

    def __init__(
        self,
        lan: Lan,
        db_kind: str,
        ttl: float = 4,
        heartbeat: float = 1,
        health_interval: float = 0.2,
        nodes: int = 2,
        ipv6: bool = False,
        name: str = "it",
        init_db_as: str | None = None,
        **extra: Any,
    ) -> None:
        self.health_interval = health_interval
        self.token: str | None = extra.get("token")  # http.token: /status is read with it
        self.lan = lan
        self.name = name
        self.work = tempfile.mkdtemp(prefix="fos-cluster-")
        os.chmod(self.work, 0o755)
        self.names = [f"m{i}" for i in range(1, nodes + 1)]
        self.hosts = {n: lan.add_host(n) for n in self.names}
        self.m1, self.m2 = self.hosts["m1"], self.hosts["m2"]
        self.client = lan.add_host("client")
        self.vip, self.family = (VIP6, AF_INET6) if ipv6 else (VIP, AF_INET)
        self.db_server: dbservers.DbServer | None = None
        self.sampler = IpSampler(list(self.hosts.values()), self.vip, family=self.family)  # started below
        self.config = os.path.join(self.work, "fos.toml")
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.last_call = (0.0, 0.0)  # when the last store_call was sent and answered (monotonic)
        self.logs: dict[str, Any] = {}
        try:  # whatever was started is stopped again if a later step fails
            if db_kind == "postgresql":
                self.db = lan.add_host("db")
                self.db_server = dbservers.start_postgresql(host=self.db.ip, netns=self.db.ns)
                dsn = self.db_server.dsn(KeepaliveTime="2", KeepaliveInterval="1")
            else:
                dsn = f"Driver=SQLite3;Database={self.work}/lease.db;Timeout=500"
            init_as = name if init_db_as is None else init_db_as
            if init_as:
                self._write_config(dsn, ttl, heartbeat, extra, init_as)
                out = self.m1.run(sys.executable, "-m", "agent", "init-db", "--config", self.config, timeout=60)
                assert "ready" in out.stdout
            self._write_config(dsn, ttl, heartbeat, extra, name)
            self.sampler.start()
            self.prober = Prober(self.client, self.vip)
        except BaseException:
            self.close()
            raise

    def _write_config(self, dsn: str, ttl: float, heartbeat: float, extra: dict[str, Any], name: str) -> None:
        app = extra.get("app", f'command = "{sys.executable} {WEBAPP} --port 8080"')
        if extra.get("mode"):  # application.mode: "warm" runs the app on every node
            app += f'\nmode = "{extra["mode"]}"'
        prefix = 64 if self.family == AF_INET6 else 24
        priorities: dict[str, int] = extra.get("priorities", {})
        nodes = "".join(
            f'''[[nodes]]
name = "{n}"
interface = "eth0"
url = "http://{h.ip}:8080/"
priority = {priorities.get(n, 0)}
'''
            for n, h in self.hosts.items()
        )
        text = f"""
[cluster]
name = "{name}"
common_ip = "{self.vip}/{prefix}"
{extra.get("cluster_keys", "")}
{nodes}[database]
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
{f'token = "{extra["token"]}"' if extra.get("token") else ""}
{extra.get("toml", "")}
{extra.get("tables", "")}
"""
        with open(self.config, "w") as f:
            f.write(text)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def agent_argv(self, node: str, state_dir: str | None = None) -> list[str]:
        """`fos run` for `node` with this cluster's config (state dir: the cluster's work dir unless given)."""
        return [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            self.config,
            "--node",
            node,
            "--state-dir",
            state_dir or self.work,
        ]

    def start(
        self, name: str, on: str | None = None, state_dir: str | None = None, label: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `fos run --node name` on host `on` (default: its own), kept in agents[label] (default: name) and
        logged to <work>/<label>.log."""
        label = label or name
        log = open(os.path.join(self.work, f"{label}.log"), "ab")  # noqa: SIM115 - closed in close()
        self.logs.setdefault(label, []).append(log)
        proc = self.host(on or name).popen(self.agent_argv(name, state_dir), stdout=log, stderr=log, cwd=ROOT)
        self.agents[label] = proc
        return proc

    def run_once(
        self, on: str, node: str, state_dir: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run `fos run --node node` on host `on` to its end (a refusal exits at once; killed at `timeout`)."""
        argv = self.host(on).argv(self.agent_argv(node, state_dir))
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=ROOT)

    def fos(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A `fos` command with this cluster's config, run on m1's host."""
        return self.m1.run(sys.executable, "-m", "agent", *args, "--config", self.config, check=False, timeout=timeout)

    def store_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One lease-store method with this cluster's config, run on m1's host (the database is reachable from
        every node's namespace): how the tests write an operator's intent, e.g.
        store_call("request_switchover", "m2", 0, "op@test"). Returns the result as JSON allows; `last_call`
        then holds when the call was sent and answered (without the interpreter's start)."""
        code = (
            "import asyncio,json,sys\n"
            "from agent.config import load\nfrom agent.stores import command_store\n"
            "from lease import EventKind\n"
            "async def main():\n"
            f" cfg=load({self.config!r})\n store=command_store(cfg)\n"
            f" kw=json.loads({json.dumps(kwargs)!r})\n"
            " if 'kind' in kw: kw['kind']=EventKind(kw['kind'])\n"
            " import time\n sent=time.monotonic()\n"
            f" out=await getattr(store,{method!r})(cfg.cluster,*json.loads({json.dumps(args)!r}),**kw)\n"
            " done=time.monotonic()\n await store.close()\n"
            " print(json.dumps({'out':out,'sent':sent,'done':done},"
            " default=lambda o: o.__dict__ if hasattr(o, '__dict__') else str(o)))\n"
            "asyncio.run(main())\n"
        )
        out = self.m1.run(sys.executable, "-c", code, check=False, timeout=30)
        assert out.returncode == 0, f"store {method} failed: {out.stderr.strip()[-500:]}"
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        self.last_call = (float(doc["sent"]), float(doc["done"]))  # CLOCK_MONOTONIC is the same in every netns
        return doc["out"]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The cluster's events (oldest first), optionally of one kind."""
        found = self.store_call("list_events", limit=500)
        return [e for e in reversed(found) if kind is None or e["kind"] == kind]

    def lease(self) -> dict[str, Any]:
        return dict(self.store_call("read"))

    def status(self, name: str) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        code = (
            f"import urllib.request;r=urllib.request.Request('http://{self.host(name).ip}:8470/status',"
            f"headers={headers!r});print(urllib.request.urlopen(r,timeout=0.5).read().decode())"
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

    def roles(self) -> dict[str, str | None]:
        return {n: self.role(n) for n in self.names}

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

    def start_all(self) -> str:
        """Start m1, wait for it to be active, then every other node, each until standby; return "m1"."""
        self.active_pair()
        for name in self.names[2:]:
            self.start(name)
            self.wait_role(name, "standby")
        return "m1"

    def app_pid(self, name: str) -> int | None:
        """The pid of `name`'s application keeper (the session and process group of the application)."""
        path = os.path.join(self.work, f"{self.name}-{name}.pid")
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
        for name in self.names:
            if pid := self.app_pid(name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for logs in self.logs.values():
            for log in logs:
                log.close()
        if self.db_server is not None:
            self.db_server.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def clusters(lan: Lan, **defaults: Any) -> Iterator[Callable[..., Cluster]]:
    """A factory of clusters on `lan` (keyword defaults for Cluster), each closed at the end with its agents'
    log tails printed (pytest shows them for a failed test)."""
    made: list[Cluster] = []

    def make(db: str = "postgresql", **kwargs: Any) -> Cluster:
        cluster = Cluster(lan, db, **{**defaults, **kwargs})
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for name in sorted(set(cluster.names) | set(cluster.logs)):
                print(f"----- {name} agent log -----\n{cluster.log_text(name)[-6000:]}")
            cluster.close()


def assert_never_two_holders(c: Cluster) -> None:
    """The sampler never saw the common IP on two nodes, and it sampled often enough to tell."""
    both = c.sampler.both_bound()
    assert not both, f"common IP bound on two nodes at {len(both)} samples, first at {both[0]}"
    gap, at = c.sampler.max_gap()
    assert len(c.sampler.samples) > 100 and gap < 0.2, f"the sampler did not sample for {gap:.3f}s from {at:.3f}"


def served_by(c: Cluster, node: str, after: float, timeout: float) -> float:
    """The time of the client's first answer from `node` at or after `after` (waits up to `timeout`)."""
    return float(
        wait_for(lambda: c.prober.first_answer_from(node, after), timeout, 0.02, f"the client to be served by {node}")
    )


def session_members(sid: int) -> set[int]:
    """The pids of every live (non-zombie) process in session `sid`: a supervised app's keeper and all it started."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.add(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (utime, stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
