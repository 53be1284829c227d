"""`fos run` loads only what runs (issue #14, footprint): with a minimal cluster file the agent never imports the
code of the other commands (doctor, mirror, history, switchover...) nor of features that are off (mail and
webhooks without [notify], the mirror schedule without [replication]). Each module not loaded is memory an idle
agent does not hold; this test keeps a later top-level import from silently undoing that.

The agent runs as in production (`python -m agent run`) with `-X importtime`, which names every module imported,
at start-up or later, on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.dbservers import free_port
from tests.support.netns import wait_for

FOS = [sys.executable, "-m", "agent"]

# Modules `fos run` must not load when the features they serve are off.
NOT_LOADED = {
    "agent.cli_control": "switchover/maintenance/history commands",
    "agent.cli_ops": "mirror/doctor commands",
    "agent.cli_notify": "the notify test command",
    "agent.doctor": "fos doctor",
    "agent.doctor_checks": "fos doctor",
    "agent.history": "fos history",
    "agent.notifier": "[notify] is off",
    "agent.notify_send": "[notify] is off",
    "aiosmtplib": "[notify] has no mail",
    "agent.replication": "[replication] is off",
    "agent.replication_schedule": "[replication] is off",
    "agent.replication_receive": "fos mirror receive",
}
# ...while these prove the listing is real: the agent's own parts, which must show up.
LOADED = ("agent.runner", "agent.http", "aiohttp.web", "lease.store")


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` lines ('import time: self | cumulative | name')."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except OSError:
        return None


def test_fos_run_with_a_minimal_config_loads_no_code_of_other_commands_or_features_that_are_off(
    tmp_path: Path,
) -> None:
    port = free_port()
    cfg = tmp_path / "fos.toml"
    cfg.write_text(
        "\n".join(
            [
                "[cluster]",
                'name = "c1"',
                'address_driver = "none"',
                "[[nodes]]",
                'name = "m1"',
                "[database]",
                f'dsn = "Driver=SQLite3;Database={tmp_path}/lease.db"',
                "[lease]",
                "ttl = 4",
                "heartbeat = 1",
                "[http]",
                f'listen = "127.0.0.1:{port}"',
            ]
        )
        + "\n"
    )
    init = subprocess.run([*FOS, "init-db", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    run = [*FOS[:1], "-X", "importtime", *FOS[1:], "run", "--config", str(cfg), "--node", "m1"]
    with open(tmp_path / "stderr", "w+") as err:
        agent = subprocess.Popen([*run, "--state-dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            # Active and a few heartbeats on: whatever the idle loop imports later is in the listing too.
            wait_for(lambda: (s := status(port)) is not None and s["role"] == "active", 30, what="m1 active")
            wait_for(lambda: (s := status(port)) is not None and s["epoch"] and s["fence_in_s"], 10, what="renewing")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        err.seek(0)
        modules = imported_modules(err.read())
    assert all(m in modules for m in LOADED), sorted(modules)
    loaded = {m: why for m, why in NOT_LOADED.items() if m in modules}
    assert not loaded, f"fos run loaded modules it does not use: {loaded}"
