"""Application supervision with real processes: process groups, bounded stops, orphans of a crashed agent."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from agent.app import AppError, NoApplication, StartStopCommands, SupervisedCommand


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


async def test_a_string_command_runs_through_the_shell_with_the_fos_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    app = SupervisedCommand(f'echo "$FOS_NODE $FOS_EPOCH" > {out}; sleep 30', stop_timeout=2)
    await app.start({"FOS_NODE": "m1", "FOS_EPOCH": "7"})
    for _ in range(200):
        if out.exists() and out.read_text():
            break
        await asyncio.sleep(0.01)
    assert out.read_text().strip() == "m1 7"
    assert app.running()
    await app.stop()
    assert not app.running()


async def test_stop_kills_the_whole_group_after_the_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The shell ignores SIGTERM, and leaves a grandchild behind: both must be gone after stop().
    app = SupervisedCommand(
        f"trap '' TERM; sleep 60 & echo $! > {pids}; while true; do sleep 0.1; done", stop_timeout=0.5
    )
    await app.start({})
    for _ in range(200):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.01)
    grandchild = int(pids.read_text())
    started = time.monotonic()
    await app.stop()
    assert time.monotonic() - started < 3
    await asyncio.sleep(0.1)
    assert not alive(grandchild)


async def test_a_process_that_exits_sets_exited() -> None:
    app = SupervisedCommand([sys.executable, "-c", "import sys; sys.exit(3)"], stop_timeout=1)
    await app.start({})
    await asyncio.wait_for(app.exited.wait(), 5)
    assert app.running() is False


async def test_an_orphan_left_by_a_crashed_agent_is_ended_at_start(tmp_path: Path) -> None:
    pidfile = str(tmp_path / "app.pid")
    first = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=pidfile)
    await first.start({})
    orphan = int(Path(pidfile).read_text())  # noqa: ASYNC240 - a test's one-off read
    # A new agent (the old one "crashed" without stopping its app) finds and ends it.
    second = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=pidfile)
    assert await second.reap_orphan() == orphan
    await asyncio.sleep(0.1)
    assert not alive(orphan)
    assert not os.path.exists(pidfile)  # noqa: ASYNC240 - a test's one-off check


async def test_a_pidfile_naming_someone_elses_process_is_not_acted_on(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(os.getpid()))  # our own pid: not a session leader we started
    assert await SupervisedCommand("true", 1, str(pidfile)).reap_orphan() is None
    assert alive(os.getpid())


async def test_start_commands_that_fail_or_hang_raise_app_error() -> None:
    with pytest.raises(AppError, match="exited with 4"):
        await StartStopCommands("exit 4", "true", 1, 1).start({})
    with pytest.raises(AppError, match=r"did not finish within 0\.3s"):
        await StartStopCommands("sleep 5", "true", 1, 0.3).start({})


async def test_no_application_does_nothing() -> None:
    app = NoApplication()
    await app.start({})
    await app.stop()
    assert app.running() is None
