"""`make demo`: two nodes and a client in network namespaces, the embedded SQLite lease database, the demo web
app on each node. Prints a timeline: m1 active and serving the common IP; m1 killed; m2 takes over after the
(short, demo) TTL; the client sees the answer change; m1 comes back as standby."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.netns import SUBNET, Host, Lan, wait_for  # noqa: E402

VIP = f"{SUBNET}.100"
TTL, HEARTBEAT = 4, 1

CONFIG = """
[cluster]
name = "demo"
common_ip = "{vip}/24"

[[nodes]]
name = "m1"
interface = "eth0"
url = "http://{m1}:8080/"

[[nodes]]
name = "m2"
interface = "eth0"
url = "http://{m2}:8080/"

[database]
dsn = "Driver=SQLite3;Database={db};Timeout=500"

[lease]
ttl = {ttl}
heartbeat = {hb}
min_hold = 1

[application]
command = "{python} {webapp} --port 8080"
stop_timeout = 3

[application.health]
http = "http://127.0.0.1:8080/health"
interval = 0.5
timeout = 0.4
failures = 3

[http]
listen = "0.0.0.0:8470"
"""

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.2f}s] {text}", flush=True)


def in_ns(host: Host, code: str, timeout: float = 5) -> str | None:
    out = host.run(sys.executable, "-c", code, check=False, timeout=timeout + 5)
    return out.stdout.strip() if out.returncode == 0 else None


def get(client: Host, url: str, timeout: float = 0.5) -> str | None:
    return in_ns(
        client,
        f"import urllib.request;print(urllib.request.urlopen('{url}', timeout={timeout}).read().decode().strip())",
        timeout,
    )


def role_of(client: Host, node: Host) -> str | None:
    doc = get(client, f"http://{node.ip}:8470/status")
    return json.loads(doc)["role"] if doc else None


def start_agent(host: Host, config: str, logdir: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(logdir, f"{host.name}.log"), "ab")  # noqa: SIM115 - lives as long as the agent
    return host.popen(
        [sys.executable, "-m", "agent", "run", "--config", config, "--node", host.name, "--state-dir", logdir],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )


def main() -> int:
    if os.geteuid() != 0:
        print(
            "make demo needs root: it creates network namespaces and binds the common IP there "
            "(CAP_NET_ADMIN, CAP_NET_RAW). Run it as root, e.g. `sudo make demo`.",
            file=sys.stderr,
        )
        return 1
    work = tempfile.mkdtemp(prefix="fos-demo-")
    lan = Lan()
    try:
        m1, m2, client = lan.add_host("m1"), lan.add_host("m2"), lan.add_host("client")
        config = os.path.join(work, "fos.toml")
        with open(config, "w") as f:
            f.write(
                CONFIG.format(
                    vip=VIP,
                    m1=m1.ip,
                    m2=m2.ip,
                    db=os.path.join(work, "lease.db"),
                    ttl=TTL,
                    hb=HEARTBEAT,
                    python=sys.executable,
                    webapp=os.path.join(ROOT, "examples", "webapp.py"),
                )
            )
        say(
            f"test LAN ready: m1 {m1.ip}, m2 {m2.ip}, client {client.ip}; common IP {VIP}; "
            f"lease ttl {TTL}s, heartbeat {HEARTBEAT}s; SQLite lease database in {work}"
        )
        subprocess.run([sys.executable, "-m", "agent", "init-db", "--config", config], check=True, cwd=ROOT)
        agents = {"m1": start_agent(m1, config, work)}
        wait_for(lambda: role_of(client, m1) == "active", 30, 0.2, "m1 to become active")
        say(f"m1 is active; the client asks http://{VIP}:8080/ -> {get(client, f'http://{VIP}:8080/')}")
        agents["m2"] = start_agent(m2, config, work)
        wait_for(lambda: role_of(client, m2) == "standby", 30, 0.2, "m2 to become standby")
        say("m2 is standby")

        say("killing m1's agent (SIGKILL): a dead machine renews nothing; its application dies with it")
        killed = time.monotonic()
        os.killpg(agents["m1"].pid, signal.SIGKILL)
        last = None
        while time.monotonic() - killed < TTL + 15:
            answer = get(client, f"http://{VIP}:8080/", timeout=0.3) or "(no answer)"
            if answer != last:
                say(f"client sees: {answer}  ({time.monotonic() - killed:.2f}s after the kill)")
                last = answer
            if answer.startswith("m2"):
                break
        if not (last or "").startswith("m2"):
            say("m2 did not take over: see the agent logs in " + work)
            return 1
        say(f"m2 took over {time.monotonic() - killed:.2f}s after the kill (lease ttl {TTL}s)")
        say("restarting m1's agent")
        agents["m1"] = start_agent(m1, config, work)
        wait_for(lambda: role_of(client, m1) == "standby", 30, 0.2, "m1 to come back as standby")
        say(f"m1 is back as standby; the client still gets: {get(client, f'http://{VIP}:8080/')}")
        status = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--config", config],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        print("\n$ fos status\n" + status.stdout, flush=True)
        for proc in agents.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in agents.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR2)
                time.sleep(1)
                raise AssertionError(f"{name}'s agent did not stop within 20s of SIGTERM") from None
        say("both agents stopped (SIGTERM: the active one dropped the IP, stopped its app, released the lease)")
        return 0
    except AssertionError as exc:
        say(f"demo failed: {exc}")
        for name in ("m1", "m2"):
            path = os.path.join(work, f"{name}.log")
            if os.path.exists(path):
                with open(path) as f:
                    print(f"--- last lines of {name}'s agent log ---\n" + "".join(f.readlines()[-60:]), flush=True)
        return 1
    finally:
        lan.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    urllib.request.getproxies = dict  # type: ignore[assignment]
    sys.exit(main())
