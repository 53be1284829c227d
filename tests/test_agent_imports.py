"""`fos run` loads only what runs (issue #14, footprint): with a minimal cluster file the agent never imports the
code of the other commands (doctor, mirror, history, switchover...) nor of features that are off (mail and
webhooks without [notify], the mirror schedule without [replication]). Each module not loaded is memory an idle
agent does not hold; this test keeps a later top-level import from silently undoing that.

The agent runs as in production (`python -m agent run`) with `-X importtime`, which names every module imported,
at start-up or later, on stderr."""

from __future__ import annotations

from pathlib import Path

from tests.support.minimal_agent import renewing_agent

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
