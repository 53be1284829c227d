"""`fos run` as in production (`python -m agent run`) with a minimal cluster file: one node, SQLite, no common IP
(address_driver none), no application, HTTP on a free loopback port. For tests of what a plain agent process
holds (its modules, its heap), not of failover."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tests.support.dbservers import free_port
from tests.support.netns import wait_for

FOS = [sys.executable, "-m", "agent"]


def status(port: int) -> dict[str, Any] | None:
    """The agent's /status, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except OSError:
        return None


@contextlib.contextmanager
def renewing_agent(tmp_path: Path, stderr: IO[str], python_flags: tuple[str, ...] = ()) -> Iterator[int]:
    """Start the agent (with these interpreter flags, its stderr into `stderr`), yield its pid once it is active
    and renewing; stop it with SIGTERM afterwards (it must exit 0), killed if it does not."""
    port = free_port()
    cfg = tmp_path / "fos.toml"
    lines = ["[cluster]", 'name = "c1"', 'address_driver = "none"', "[[nodes]]", 'name = "m1"', "[database]"]
    lines += [f'dsn = "Driver=SQLite3;Database={tmp_path}/lease.db"', "[lease]", "ttl = 4", "heartbeat = 1"]
    lines += ["[http]", f'listen = "127.0.0.1:{port}"']
    cfg.write_text("\n".join(lines) + "\n")
    init = subprocess.run([*FOS, "init-db", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    argv = [FOS[0], *python_flags, *FOS[1:], "run", "--config", str(cfg), "--node", "m1", "--state-dir", str(tmp_path)]
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: (s := status(port)) is not None and s["role"] == "active", 30, what="m1 active")
        wait_for(lambda: (s := status(port)) is not None and s["fence_in_s"], 10, what="m1 renewing")
        yield agent.pid
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
