"""`fos run` loads only what runs (issue #14, footprint): with a minimal cluster file the agent never imports the
code of the other commands (doctor, mirror, history, switchover...) nor of features that are off (mail and
webhooks without [notify], the mirror schedule without [replication]). Each module not loaded is memory an idle
agent does not hold; this test keeps a later top-level import from silently undoing that.

The agent runs as in production (`python -m agent run`) with `-X importtime`, which names every module imported,
at start-up or later, on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.minimal_agent import renewing_agent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def test_fos_run_with_a_minimal_config_loads_no_code_of_other_commands_or_features_that_are_off(
    tmp_path: Path,
) -> None:
    with open(tmp_path / "stderr", "w+") as err:
        # Active and renewing: whatever the idle loop imports later is in the listing too.
        with renewing_agent(tmp_path, err, python_flags=("-X", "importtime")):
            pass
        err.seek(0)
        modules = imported_modules(err.read())
    assert all(m in modules for m in LOADED), sorted(modules)
    loaded = {m: why for m, why in NOT_LOADED.items() if m in modules}
    assert not loaded, f"fos run loaded modules it does not use: {loaded}"


def test_fos_switchover_loads_neither_the_agents_service_nor_aiohttp(tmp_path: Path) -> None:
    """A command's start-up is part of the planned move it makes (`fos switchover`): the agent's service and
    aiohttp (its client builds two TLS contexts at import, about 0.25 s here) load only for `fos run` and
    `fos notify test`. (The command fails at once: no such config; its imports happen before.)"""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent", "switchover", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    modules = imported_modules(out.stderr)
    assert "agent.cli_control" in modules, sorted(modules)  # the listing is real: the command's own module
    assert out.returncode == 2, out.stderr[-500:]
    loaded = sorted(m for m in modules if m == "agent.service" or m == "aiohttp" or m.startswith("aiohttp."))
    assert not loaded, f"fos switchover loaded {loaded}"
