"""examples/fos.service: the keys README promises, a command line `fos` accepts, and systemd's own verdict."""

from __future__ import annotations

import configparser
import dataclasses
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import AppConfig

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "examples" / "fos.service"


def load_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign] # systemd keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def seconds(value: str) -> float:
    """A systemd time span of the forms used here: "30", "30s", "2min"."""
    units = {"": 1, "s": 1, "min": 60}
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units[value[len(number) :]]


def test_exec_start_runs_the_fos_console_script_with_flags_fos_accepts() -> None:
    service = load_unit(UNIT)["Service"]
    argv = shlex.split(service["ExecStart"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts
    assert argv[0] == "/opt/fos/bin/fos"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("run", "/etc/fos/fos.toml")
    assert args.state_dir == "/run/" + service["RuntimeDirectory"]  # the default state dir is the unit's


def test_the_agent_gets_only_the_two_network_capabilities() -> None:
    service = load_unit(UNIT)["Service"]
    assert set(service["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["User"] != "root"


def test_it_restarts_except_after_bad_input_and_reads_the_password_from_an_environment_file() -> None:
    service = load_unit(UNIT)["Service"]
    assert service["Restart"] == "always"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["EnvironmentFile"] == "-/etc/fos/fos.env"


def test_systemd_waits_for_the_app_stop_and_the_release_before_killing_the_agent() -> None:
    service = load_unit(UNIT)["Service"]
    default_stop_timeout = next(f.default for f in dataclasses.fields(AppConfig) if f.name == "stop_timeout")
    assert isinstance(default_stop_timeout, float)
    assert seconds(service["TimeoutStopSec"]) >= default_stop_timeout + 10
    assert service["KillMode"] == "mixed"  # SIGTERM to the agent alone: it stops the app itself, in order


def test_the_start_stop_application_pattern_is_documented_in_the_unit() -> None:
    text = UNIT.read_text()
    assert "#   BindsTo=fos.service\n" in text
    assert "#   After=fos.service\n" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at one that does.
    copy = tmp_path / "fos.service"
    copy.write_text(UNIT.read_text().replace("/opt/fos/bin/fos", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
