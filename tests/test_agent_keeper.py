"""The keeper process on its own: its command line, the start-up parent check, and credentials for a non-root
agent holding ambient capabilities (as under systemd with User= and AmbientCapabilities=)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import keeper
from agent.app import KEEPER

# The system interpreter: an unprivileged user may run it (this venv's interpreter may live under /root).
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["12", "0.5", "--", "sh", "-c", "x"], (12, 0.5, None, None, [], ["sh", "-c", "x"])),
        (
            ["12", "1", "uid=65534", "gid=1", "groups=1,2", "--", "app", "--", "y"],
            (12, 1.0, 65534, 1, [1, 2], ["app", "--", "y"]),
        ),
    ],
)
def test_the_keeper_command_line_is_parsed(argv: list[str], parsed: tuple[object, ...]) -> None:
    spec = keeper.Spec(argv)
    assert (spec.agent_pid, spec.grace, spec.uid, spec.gid, spec.groups, spec.command) == parsed


@pytest.mark.parametrize("argv", [["12", "0.5"], ["12", "--", "x"], ["12", "0.5", "--"], ["x", "0.5", "--", "y"]])
def test_a_malformed_keeper_command_line_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        keeper.Spec(argv)


async def test_a_keeper_whose_parent_is_not_the_agent_starts_nothing(tmp_path: Path) -> None:
    # The agent died between fork and prctl: the keeper was reparented, and must not start the application.
    marker = tmp_path / "started"
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-I", "-S", KEEPER, "1", "0.5", "--", "touch", str(marker)
    )
    assert await proc.wait() == keeper.ORPHANED
    assert not marker.exists()


async def test_a_command_that_cannot_run_exits_127_with_one_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        "-I",
        "-S",
        KEEPER,
        str(os.getpid()),
        "0.5",
        "--",
        str(tmp_path / "missing"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == keeper.CANNOT_RUN
    assert err.decode() == f"fos keeper: cannot run '{tmp_path / 'missing'}': No such file or directory\n"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fos-keeper-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d)


NET_ADMIN_AND_RAW = "0000000000003000"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
@pytest.mark.parametrize(("user", "caps"), [(None, NET_ADMIN_AND_RAW), ("65534", "0000000000000000")])
async def test_a_non_root_agents_ambient_capabilities_reach_the_app_only_without_application_user(
    shared_dir: Path, user: str | None, caps: str
) -> None:
    out = shared_dir / "caps"
    creds = [] if user is None else [f"uid={user}", f"gid={user}", f"groups={user}"]
    # An agent running as nobody with ambient CAP_NET_ADMIN and CAP_NET_RAW, as fos.service sets it up.
    agent = ["setpriv", "--reuid=65534", "--regid=65534", "--init-groups"]
    agent += ["--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"]
    report = f"grep -E '^Cap(Prm|Eff|Amb):' /proc/self/status > {out}"
    proc = await asyncio.create_subprocess_exec(
        *agent, SYSTEM_PYTHON, "-I", "-S", KEEPER, str(os.getpid()), "0.5", *creds, "--", "sh", "-c", report
    )
    assert await proc.wait() == 0
    assert out.read_text().split() == ["CapPrm:", caps, "CapEff:", caps, "CapAmb:", caps]
