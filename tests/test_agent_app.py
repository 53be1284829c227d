"""Application supervision with real processes: process groups, bounded stops, orphans of a crashed agent."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.app import ORPHAN_GRACE, AppError, NoApplication, StartStopCommands, SupervisedCommand
from agent.config import ConfigError
from tests.support.procs import alive

# --- shared helpers for the tests below -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent

# A stand-in agent: supervises argv[1] (pidfile argv[2] if given) and waits to be killed.
HARNESS = """
import asyncio, sys
from agent.app import SupervisedCommand

async def main() -> None:
    app = SupervisedCommand(sys.argv[1], stop_timeout=10, pidfile=sys.argv[2] if len(sys.argv) > 2 else None)
    await app.start({})
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def wait_for_pid(path: Path, timeout: float = 5.0) -> int:
    """The pid a test app writes into `path`, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text())  # noqa: ASYNC240 - a test's one-off read
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was never written")


async def gone_within(pids: list[int], timeout: float) -> float:
    """Seconds until none of `pids` runs any more (a zombie counts as gone); fails after `timeout`."""
    started = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still running after {timeout}s: {[p for p in pids if alive(p)]}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def processes_with(marker: str) -> list[int]:
    """Pids of running (not zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read() and alive(int(entry)):
                    found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


class Leftovers:
    """Pids a test saw; whatever of them still runs when the test ends (failed) is killed. Each is kept with its
    start time: a pid the kernel handed to another process meanwhile is left alone."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def add(self, *pids: int) -> None:
        for pid in pids:
            with contextlib.suppress(FileNotFoundError):
                self.seen[pid] = start_time_of(pid)

    def kill(self) -> None:
        for pid, started in self.seen.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if start_time_of(pid) == started:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    seen = Leftovers()
    yield seen
    seen.kill()


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


async def test_a_second_agent_sharing_the_pidfile_never_touches_a_live_agents_app(tmp_path: Path) -> None:
    # Item 9: a second `fos run` with the same state dir SIGTERMed the live application through the pidfile.
    pidfile = tmp_path / "app.pid"
    first = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=str(pidfile))
    await first.start({})
    before = pidfile.read_text()
    try:
        with pytest.raises(ConfigError, match=r"is supervised by a running fos agent \(pid \d+\): stop that agent"):
            await SupervisedCommand("sleep 60", stop_timeout=1, pidfile=str(pidfile)).reap_orphan()
        assert first.running()
        assert pidfile.read_text() == before
    finally:
        await first.stop()


async def test_an_orphan_whose_keeper_could_not_act_is_ended_by_the_next_agent(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    harness = await asyncio.create_subprocess_exec(sys.executable, "-c", HARNESS, command, str(pidfile), cwd=REPO)
    try:
        app = await wait_for_pid(leader, 10)
        orphan = json.loads(pidfile.read_text())["pid"]
        leftovers.add(app, orphan)
        os.kill(orphan, signal.SIGSTOP)  # a frozen keeper cannot end the app when its agent dies
        harness.kill()
        await harness.wait()
        await asyncio.sleep(0.2)
        assert alive(app)
        # A new agent finds and ends the whole group, frozen keeper included.
        assert await SupervisedCommand("sleep 60", stop_timeout=0.5, pidfile=str(pidfile)).reap_orphan() == orphan
        await gone_within([app, orphan], 1)
        assert not pidfile.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            harness.kill()
        await harness.wait()


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


# --- item 11: the app must not outlive a fence --------------------------------------------------------------------


async def test_a_cancelled_start_script_is_killed_with_its_group_before_the_cancel_returns(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    leader, kid = tmp_path / "leader", tmp_path / "kid"
    app = StartStopCommands(f"sleep 60 & echo $! > {kid}; echo $$ > {leader}; wait", "true", 1, 30)
    task = asyncio.create_task(app.start({}))
    pids = [await wait_for_pid(leader), await wait_for_pid(kid)]
    leftovers.add(*pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p for p in pids if alive(p)] == []


async def test_stop_ends_the_group_even_when_its_leader_has_already_exited(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    kid = tmp_path / "kid"
    app = SupervisedCommand(f"sleep 60 & echo $! > {kid}; exit 0", stop_timeout=1)
    await app.start({})
    pid = await wait_for_pid(kid)
    leftovers.add(pid)
    await asyncio.wait_for(app.exited.wait(), 5)
    await app.stop()
    await gone_within([pid], 0.5)


async def test_stop_kills_a_left_behind_member_that_ignores_sigterm_after_the_timeout(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    kid = tmp_path / "kid"
    app = SupervisedCommand(f"(trap '' TERM; sleep 60) & echo $! > {kid}; exit 0", stop_timeout=0.3)
    await app.start({})
    pid = await wait_for_pid(kid)
    leftovers.add(pid)
    await asyncio.wait_for(app.exited.wait(), 5)
    started = time.monotonic()
    await app.stop()
    assert 0.25 < time.monotonic() - started < 2
    await gone_within([pid], 0.5)


async def test_a_cancelled_stop_still_stops_the_app_before_the_cancel_returns(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    app = SupervisedCommand(f"trap '' TERM; echo $$ > {leader}; while true; do sleep 0.05; done", 0.5, str(pidfile))
    await app.start({})
    pid = await wait_for_pid(leader)
    leftovers.add(pid)
    task = asyncio.create_task(app.stop())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)
    assert not app.running()
    assert not pidfile.exists()


async def test_a_cancelled_stop_command_still_runs_to_its_end(tmp_path: Path) -> None:
    done = tmp_path / "done"
    app = StartStopCommands("true", f"sleep 0.3; touch {done}", stop_timeout=5, start_timeout=5)
    task = asyncio.create_task(app.stop())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.exists()


async def test_a_start_cancelled_at_any_point_of_spawning_leaves_no_process(tmp_path: Path) -> None:
    marker = f"fos-spawn-{os.getpid()}-{time.monotonic_ns()}"
    app = SupervisedCommand([sys.executable, "-c", "import time; time.sleep(60)", marker], 1, str(tmp_path / "p"))
    for yields in range(40):
        task = asyncio.create_task(app.start({}))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app.stop()  # what the runner does after a cancelled promotion
    deadline = time.monotonic() + 2
    while processes_with(marker) and time.monotonic() < deadline:  # noqa: ASYNC110 - strangers' pids: poll
        await asyncio.sleep(0.01)
    assert processes_with(marker) == []


# --- the pidfile: never kill a stranger that reuses the pid ---------------------------------------------------------


async def test_a_session_leader_reusing_the_pid_of_an_old_pidfile_is_not_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    stranger = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        pidfile.write_text(str(stranger.pid))  # the format before start times were recorded: cannot be verified
        assert await SupervisedCommand("true", 1, str(pidfile)).reap_orphan() is None
        assert alive(stranger.pid)
        assert not pidfile.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            stranger.kill()
        await stranger.wait()


async def test_a_session_leader_whose_start_time_or_command_differs_is_not_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    stranger = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        start_time = start_time_of(stranger.pid)
        for recorded in (
            {"pid": stranger.pid, "start_time": start_time - 1, "cmdline": ["sleep", "60"]},
            {"pid": stranger.pid, "start_time": start_time, "cmdline": ["sleep", "61"]},
        ):
            pidfile.write_text(json.dumps(recorded))
            assert await SupervisedCommand("true", 1, str(pidfile)).reap_orphan() is None
            assert alive(stranger.pid)
        pidfile.write_text(json.dumps({"pid": stranger.pid, "start_time": start_time, "cmdline": ["sleep", "60"]}))
        assert await SupervisedCommand("true", 1, str(pidfile)).reap_orphan() == stranger.pid  # all match: ours
        await gone_within([stranger.pid], 1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            stranger.kill()
        await stranger.wait()


# --- item 15: a killed agent takes its application with it ---------------------------------------------------------


@pytest.mark.parametrize("trap", ["", "trap '' TERM;"], ids=["app-obeys-sigterm", "app-ignores-sigterm"])
async def test_an_app_and_its_children_die_within_a_second_of_a_sigkill_of_the_agent(
    tmp_path: Path, trap: str, leftovers: Leftovers
) -> None:
    leader, kid = tmp_path / "leader", tmp_path / "kid"
    command = f"{trap} sleep 60 & echo $! > {kid}; echo $$ > {leader}; while true; do sleep 0.05; done"
    harness = await asyncio.create_subprocess_exec(sys.executable, "-c", HARNESS, command, cwd=REPO)
    try:
        pids = [await wait_for_pid(leader, 10), await wait_for_pid(kid, 10)]
        leftovers.add(*pids)
        harness.kill()
        await harness.wait()
        await gone_within(pids, 1.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            harness.kill()
        await harness.wait()


# --- application.user / application.group --------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged app may write into (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="fos-app-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d)


REPORT = "id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status"


def expected_report(user: str, gid: int | None = None) -> list[str]:
    """What REPORT prints for an app run as `user` (primary group `gid`): groups as initgroups(user, gid) sets."""
    pw = pwd.getpwnam(user)
    gid = pw.pw_gid if gid is None else gid
    groups = dict.fromkeys([gid, *os.getgrouplist(user, gid)])
    caps = [f"Cap{s}:\t{0:016x}" for s in ("Prm", "Eff", "Amb")]
    return [str(pw.pw_uid), str(gid), " ".join(map(str, groups)), *caps]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@needs_root
async def test_a_supervised_app_runs_as_application_user_without_capabilities(shared_dir: Path) -> None:
    out = shared_dir / "report"
    app = SupervisedCommand(f"({REPORT}) > {out}", stop_timeout=1, user="nobody")
    await app.start({})
    await asyncio.wait_for(app.exited.wait(), 5)
    got = out.read_text().splitlines()
    assert got == expected_report("nobody")
    await app.stop()


@needs_root
async def test_application_group_given_by_number_replaces_the_users_primary_group(shared_dir: Path) -> None:
    out = shared_dir / "report"
    daemon_gid = grp.getgrnam("daemon").gr_gid
    app = StartStopCommands(
        f"({REPORT}) > {out}", "true", 1, 5, user=str(pwd.getpwnam("nobody").pw_uid), group=str(daemon_gid)
    )
    await app.start({})
    got = out.read_text().splitlines()
    assert got == expected_report("nobody", daemon_gid)


def test_an_unknown_application_user_or_group_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"application\.user = 'no-such-user-fos'"):
        SupervisedCommand("true", 1, user="no-such-user-fos")
    with pytest.raises(ConfigError, match=r"application\.group = 'no-such-group-fos'"):
        StartStopCommands("true", "true", 1, 1, user="nobody", group="no-such-group-fos")


# A stand-in agent stopped during maintenance: supervises argv[1] with pidfile argv[2], detaches it after argv[3]
# seconds (default 0.3) and exits.
DETACHING = """
import asyncio, sys
from agent.app import SupervisedCommand

async def main() -> None:
    app = SupervisedCommand(sys.argv[1], stop_timeout=10, pidfile=sys.argv[2])
    await app.start({})
    await asyncio.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0.3)
    app.detach()

asyncio.run(main())
"""


async def test_an_app_left_running_in_maintenance_outlives_its_agent_and_the_next_one_adopts_it(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", DETACHING, command, str(pidfile), cwd=REPO)
    app = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(app, keeper_pid)
    assert await agent.wait() == 0
    await asyncio.sleep(ORPHAN_GRACE + 0.5)  # the keeper would have ended the group by now
    assert alive(app) and alive(keeper_pid), "the app outlived the agent that left it running"
    # The next agent adopts it: no second copy, running() follows it, stop() ends the group.
    adopter = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=str(pidfile))
    assert await adopter.adopt() == keeper_pid
    assert adopter.running() is True
    await adopter.start({})  # already running: nothing started
    assert json.loads(pidfile.read_text())["pid"] == keeper_pid
    await adopter.stop()
    await gone_within([app, keeper_pid], 1)
    assert adopter.running() is False and not pidfile.exists()


async def test_an_adopted_app_that_exits_is_noticed(tmp_path: Path, leftovers: Leftovers) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", DETACHING, command, str(pidfile), cwd=REPO)
    app = await wait_for_pid(leader, 10)
    leftovers.add(app, json.loads(pidfile.read_text())["pid"])
    await agent.wait()
    adopter = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=str(pidfile))
    assert await adopter.adopt() is not None
    os.kill(app, signal.SIGKILL)
    await asyncio.wait_for(adopter.exited.wait(), 3)
    assert adopter.running() is False


# A stand-in agent restarted during maintenance: adopts the app in pidfile argv[1], says so, and then either waits
# to be killed or (argv[2] == "detach") leaves it running again, as a second stop under maintenance does.
ADOPTING = """
import asyncio, sys
from agent.app import SupervisedCommand

async def main() -> None:
    app = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=sys.argv[1])
    assert await app.adopt() is not None
    print("adopted", flush=True)
    if sys.argv[2] == "detach":
        app.detach()
        return
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _adopted_by(pidfile: Path, then: str) -> asyncio.subprocess.Process:
    adopter = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ADOPTING, str(pidfile), then, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert adopter.stdout is not None
    while (line := await asyncio.wait_for(adopter.stdout.readline(), 10)) and line.strip() != b"adopted":
        pass
    assert line.strip() == b"adopted"
    return adopter


async def test_an_adopted_app_ends_when_its_adopting_agent_is_killed(tmp_path: Path, leftovers: Leftovers) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", DETACHING, command, str(pidfile), cwd=REPO)
    app = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(app, keeper_pid)
    assert await agent.wait() == 0
    adopter = await _adopted_by(pidfile, "wait")
    os.kill(adopter.pid, signal.SIGKILL)  # maintenance is over; the new agent dies (OOM killer)
    await adopter.wait()
    await gone_within([app, keeper_pid], ORPHAN_GRACE + 2.0)


async def test_an_adopted_app_left_running_again_outlives_its_second_agent(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", DETACHING, command, str(pidfile), cwd=REPO)
    app = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(app, keeper_pid)
    assert await agent.wait() == 0
    adopter = await _adopted_by(pidfile, "detach")
    assert await adopter.wait() == 0
    await asyncio.sleep(ORPHAN_GRACE + 1.0)  # the keeper would have ended the group by now
    assert alive(app) and alive(keeper_pid), "a second stop under maintenance ended the app"
    # ... and the third agent adopts it again and ends it with itself.
    third = await _adopted_by(pidfile, "wait")
    os.kill(third.pid, signal.SIGKILL)
    await third.wait()
    await gone_within([app, keeper_pid], ORPHAN_GRACE + 2.0)


async def test_a_detach_right_after_the_start_does_not_kill_the_keeper(tmp_path: Path, leftovers: Leftovers) -> None:
    # SIGUSR1's default action is to terminate: the keeper gets it blocked from the agent until its thread takes it.
    pidfile = tmp_path / "app.pid"
    app = SupervisedCommand("sleep 60", stop_timeout=1, pidfile=str(pidfile))
    await app.start({})
    app.detach()  # before the keeper's interpreter has even started
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(keeper_pid)
    await asyncio.sleep(0.5)
    assert alive(keeper_pid), "an early SIGUSR1 killed the keeper (and with it the application)"
    os.killpg(keeper_pid, signal.SIGKILL)


# A stand-in agent of an older release (its keeper cannot re-attach) stopped during maintenance.
DETACHING_OLD = """
import asyncio, sys
import agent.app as app_module
from agent.app import SupervisedCommand

new_argv = app_module._keeper_argv
app_module._keeper_argv = lambda c, creds, *rest: [
    a for a in new_argv(c, creds, *rest) if a != app_module.keeper.REATTACH and not a.startswith("pidfile=")
]

async def main() -> None:
    app = SupervisedCommand(sys.argv[1], stop_timeout=10, pidfile=sys.argv[2])
    await app.start({})
    await asyncio.sleep(0.3)
    app.detach()

asyncio.run(main())
"""


@pytest.mark.parametrize(("script", "unattached"), [(DETACHING, False), (DETACHING_OLD, True)])
async def test_an_app_adopted_from_a_keeper_that_cannot_re_attach_says_so_until_restarted(
    tmp_path: Path, leftovers: Leftovers, script: str, unattached: bool
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(sys.executable, "-c", script, command, str(pidfile), cwd=REPO)
    app = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(app, keeper_pid)
    assert await agent.wait() == 0
    adopter = SupervisedCommand(command, stop_timeout=1, pidfile=str(pidfile))
    assert await adopter.adopt() == keeper_pid
    await asyncio.sleep(0.3)
    assert alive(app), "an adopter never signals what a keeper cannot take"
    assert adopter.unattached() is unattached
    await adopter.stop()  # the runner's restart: stop, then start under a keeper of its own
    await gone_within([app, keeper_pid], 2)
    await adopter.start({})
    assert adopter.unattached() is False and adopter.running() is True
    leftovers.add(json.loads(pidfile.read_text())["pid"])
    await adopter.stop()


async def test_a_detach_the_keeper_has_not_taken_when_its_agent_exits_still_leaves_the_app_running(
    tmp_path: Path, leftovers: Leftovers
) -> None:
    pidfile, leader = tmp_path / "app.pid", tmp_path / "leader"
    command = f"echo $$ > {leader}; while true; do sleep 0.05; done"
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DETACHING, command, str(pidfile), "1.0", cwd=REPO
    )
    app = await wait_for_pid(leader, 10)
    keeper_pid = json.loads(pidfile.read_text())["pid"]
    leftovers.add(app, keeper_pid)
    os.kill(keeper_pid, signal.SIGSTOP)  # the keeper not scheduled (a loaded machine) while the agent detaches
    try:
        assert await agent.wait() == 0  # the agent waited its bounded while, then exited
    finally:
        os.kill(keeper_pid, signal.SIGCONT)  # now the agent's death (SIGTERM) and the detach pend together
    await asyncio.sleep(1.0)  # the keeper would end the group within ORPHAN_GRACE
    assert alive(app) and alive(keeper_pid), "the app left running for maintenance was killed at its agent's exit"
    os.killpg(keeper_pid, signal.SIGKILL)
