"""The keeper process on its own: its command line, the start-up parent check, and credentials for a non-root
agent holding ambient capabilities (as under systemd with User= and AmbientCapabilities=)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import keeper
from agent.app import KEEPER, SupervisedCommand
from tests.support.procs import alive
from tests.test_agent_app import HARNESS, REPO, Leftovers, gone_within, leftovers, wait_for_pid  # noqa: F401

# The system interpreter: an unprivileged user may run it (this venv's interpreter may live under /root).
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["12", "0.5", "--", "sh", "-c", "x"], (12, 0.5, None, None, [], ["sh", "-c", "x"])),
        (["12", "0.5", "pidfile=/s/app.pid", "--", "x"], (12, 0.5, None, None, [], ["x"])),
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


def test_the_keeper_command_line_names_the_pidfile_adopters_record_themselves_in() -> None:
    assert keeper.Spec(["12", "0.5", keeper.REATTACH, "pidfile=/s/app.pid", "--", "x"]).pidfile == "/s/app.pid"
    assert keeper.Spec(["12", "0.5", "--", "x"]).pidfile is None


def test_only_the_adopter_recorded_in_the_pidfile_is_read_back(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    assert keeper._recorded_adopter(str(pidfile)) is None  # no file
    pidfile.write_text(json.dumps({"pid": 5}))
    assert keeper._recorded_adopter(str(pidfile)) is None  # nobody adopted yet
    pidfile.write_text(json.dumps({"pid": 5, "adopter": 77}))
    assert keeper._recorded_adopter(str(pidfile)) == 77
    pidfile.write_text("not json")
    assert keeper._recorded_adopter(str(pidfile)) is None
    assert keeper._recorded_adopter(None) is None


async def _started(tmp_path: Path, left: Leftovers, trap: str) -> tuple[SupervisedCommand, int, int]:
    """An application that handles `trap` itself (as daemons do for log reopening), supervised by this process."""
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"trap 'echo handled' {trap}; echo $$ > {leader}; while true; do sleep 0.05; done"
    app = SupervisedCommand(command, stop_timeout=1, pidfile=str(pidfile))
    await app.start({})  # this test process is the live agent
    pid = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    left.add(pid, keeper_pid)
    return app, pid, keeper_pid


async def _signal_group_from_another_process(keeper_pid: int, sig: str, linger: float) -> asyncio.subprocess.Process:
    code = (
        f"import os, signal, time; os.killpg({keeper_pid}, signal.{sig}); print('sent', flush=True); "
        f"time.sleep({linger})"
    )
    sender = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert sender.stdout is not None
    assert await asyncio.wait_for(sender.stdout.readline(), 10) == b"sent\n"
    return sender


async def test_a_stray_sigusr2_to_the_group_does_not_reattach_the_keeper_to_its_sender(
    tmp_path: Path,
    leftovers: Leftovers,  # noqa: F811
) -> None:
    app, pid, keeper_pid = await _started(tmp_path, leftovers, "USR2")
    try:
        sender = await _signal_group_from_another_process(keeper_pid, "SIGUSR2", 0)
        await sender.wait()  # the sender exits: the keeper must not take that for its agent's death
        await asyncio.sleep(1.0)  # the keeper would end the group within a few hundred ms
        assert alive(pid) and alive(keeper_pid), "app killed by its keeper while the agent still lives"
    finally:
        await app.stop()


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGUSR2"])
async def test_a_stray_usr_signal_to_the_group_does_not_let_the_app_outlive_a_killed_agent(
    tmp_path: Path,
    leftovers: Leftovers,  # noqa: F811
    sig: str,
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"trap 'echo handled' {sig[3:]}; echo $$ > {leader}; while true; do sleep 0.05; done"
    harness = await asyncio.create_subprocess_exec(sys.executable, "-c", HARNESS, command, str(pidfile), cwd=REPO)
    monitor = None
    try:
        app = await wait_for_pid(leader, 10)
        keeper_pid = json.loads(pidfile.read_text())["pid"]
        leftovers.add(app, keeper_pid)
        monitor = await _signal_group_from_another_process(keeper_pid, sig, 30)  # a long-lived monitor
        await asyncio.sleep(0.3)  # let the keeper take the signal
        harness.kill()  # the agent dies (OOM killer): its app must die at once, as without the signal
        await harness.wait()
        await gone_within([app], 1.5)
    finally:
        if monitor is not None:
            with contextlib.suppress(ProcessLookupError):
                monitor.kill()
            await monitor.wait()
        with contextlib.suppress(ProcessLookupError):
            harness.kill()
        await harness.wait()


async def test_a_stray_signal_is_reported_by_the_keeper(
    tmp_path: Path,
    leftovers: Leftovers,  # noqa: F811
    capfd: pytest.CaptureFixture[str],
) -> None:
    app, pid, keeper_pid = await _started(tmp_path, leftovers, "USR1")
    try:
        sender = await _signal_group_from_another_process(keeper_pid, "SIGUSR1", 0)
        await sender.wait()
        deadline = asyncio.get_running_loop().time() + 5
        seen = ""
        while f"ignored SIGUSR1 from pid {sender.pid}" not in seen:
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.02)
            seen += capfd.readouterr().err
        assert alive(pid)
    finally:
        await app.stop()


SENDS_USR2_THEN_USR1 = """
import os, signal, sys, time
k = int(sys.argv[1])
os.kill(k, signal.SIGUSR2)  # a stray re-attach ...
os.kill(k, signal.SIGUSR1)  # ... and a stray detach, pending together
print("sent", flush=True)
time.sleep(0.3)
"""


async def test_stray_usr_signals_pending_together_change_nothing(
    tmp_path: Path,
    leftovers: Leftovers,  # noqa: F811
) -> None:
    app, pid, keeper_pid = await _started(tmp_path, leftovers, "USR1")
    try:
        os.kill(keeper_pid, signal.SIGSTOP)  # both signals pend together at a descheduled keeper
        try:
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SENDS_USR2_THEN_USR1, str(keeper_pid), stdout=asyncio.subprocess.PIPE
            )
            assert sender.stdout is not None
            assert await asyncio.wait_for(sender.stdout.readline(), 10) == b"sent\n"
        finally:
            os.kill(keeper_pid, signal.SIGCONT)
        await sender.wait()
        await asyncio.sleep(1.0)
        assert alive(pid), "the keeper ended the group at the death of a process it does not serve"
    finally:
        await app.stop()
