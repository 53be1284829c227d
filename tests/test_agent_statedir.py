"""The state directory lock and the instance id, with real processes holding the lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.statedir import StateDir, instance_id
from lease.names import check_name

REPO = Path(__file__).resolve().parent.parent

# A stand-in agent: locks the state dir, starts a long-lived child that could inherit the lock, waits.
HOLDER = """
import subprocess, sys, time
from agent.statedir import StateDir
StateDir(sys.argv[1], "prod", "m1").lock()
# close_fds=False: even so, the lock must not pass to the application
child = subprocess.Popen(["sleep", "60"], close_fds=False, stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(60)
"""


class Holder:
    def __init__(self, proc: asyncio.subprocess.Process, child: int) -> None:
        self.proc, self.child = proc, child


@pytest.fixture
async def holder(tmp_path: Path) -> AsyncIterator[Holder]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(tmp_path / "state"), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    held = Holder(proc, int(line))
    yield held
    with contextlib.suppress(ProcessLookupError):
        proc.kill()  # asyncio's kill: never a pid already reaped and reused
    os.kill(held.child, signal.SIGKILL)  # no test ends it: still ours
    await proc.wait()


async def test_a_second_agent_for_the_same_node_is_refused_naming_the_holder(tmp_path: Path, holder: Holder) -> None:
    state = StateDir(str(tmp_path / "state"), "prod", "m1")
    with pytest.raises(ConfigError) as err:
        state.lock()
    assert str(err.value) == (
        f"another fos agent for node m1 of cluster prod is running with state dir {tmp_path / 'state'} "
        f"(pid {holder.proc.pid}): stop it first, or give this one another --state-dir"
    )


async def test_other_nodes_and_clusters_share_the_directory(tmp_path: Path, holder: Holder) -> None:
    with StateDir(str(tmp_path / "state"), "prod", "m2"), StateDir(str(tmp_path / "state"), "test", "m1"):
        pass


async def test_the_lock_dies_with_the_agent_even_while_its_children_live(tmp_path: Path, holder: Holder) -> None:
    holder.proc.kill()
    await holder.proc.wait()
    os.kill(holder.child, 0)  # the child still runs
    state = StateDir(str(tmp_path / "state"), "prod", "m1")
    state.lock()
    assert (tmp_path / "state" / "prod-m1.lock").read_text() == f"{os.getpid()}\n"
    state.unlock()


def test_lock_creates_the_directory_and_names_the_pidfile_after_cluster_and_node(tmp_path: Path) -> None:
    with StateDir(str(tmp_path / "a" / "b"), "prod", "m1") as state:
        assert (tmp_path / "a" / "b").is_dir()
        assert state.pidfile == str(tmp_path / "a" / "b" / "prod-m1.pid")


def test_a_state_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(ConfigError, match=r"^--state-dir \S+/state is not a directory: remove what is there"):
        StateDir(str(tmp_path / "state"), "prod", "m1").lock()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
async def test_an_unwritable_state_dir_is_a_one_line_error_naming_the_flag(tmp_path: Path) -> None:
    # An unprivileged agent: imports first (the interpreter's files may be private to root), then drop to nobody.
    script = (
        "import os, sys\n"
        "from agent.config import ConfigError\n"
        "from agent.statedir import StateDir\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    StateDir(sys.argv[1], 'prod', 'm1').lock()\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path / "state"), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode() == (
        f"--state-dir {tmp_path / 'state'} cannot be used: permission denied: "
        "run fos as a user that may write it, or pass another --state-dir\n"
    )


def test_instance_ids_without_a_state_dir_are_fresh_and_name_the_host() -> None:
    first, second = instance_id(), instance_id()
    assert first != second
    assert re.fullmatch(rf"{re.escape(os.uname().nodename[:46])}_[0-9a-z]{{6,8}}_[0-9a-f]{{8}}", first)


def test_the_state_dir_keeps_the_instance_id_across_restarts_but_not_across_dirs(tmp_path: Path) -> None:
    with StateDir(str(tmp_path / "a"), "c1", "m1") as state:
        first = state.instance_id()
        assert state.instance_id() == first
    with StateDir(str(tmp_path / "a"), "c1", "m1") as state:
        assert state.instance_id() == first, "a restarted agent keeps its id: it may resume its own lease"
    with StateDir(str(tmp_path / "b"), "c1", "m1") as state:
        assert state.instance_id() != first, "a second agent with its own state dir is another instance"
    (tmp_path / "a" / "c1-m1.instance").write_text("garbage\n")
    with StateDir(str(tmp_path / "a"), "c1", "m1") as state:
        assert re.fullmatch(r".+_[0-9a-z]{6,8}_[0-9a-f]{8}", state.instance_id())
        check_name("instance", state.instance_id())  # what the lease store accepts


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a UTS namespace")
async def test_an_instance_id_fits_64_characters_even_with_the_longest_host_name() -> None:
    host = "h" * 64  # HOST_NAME_MAX
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "--uts",
        "sh",
        "-c",
        f'hostname {host} && exec "$0" -c "$1"',
        sys.executable,
        "from agent.statedir import instance_id; print(instance_id())",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    iid = out.decode().strip()
    assert len(iid) == 64
    assert re.fullmatch(r"h+_[0-9a-z]{6,8}_[0-9a-f]{8}", iid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_a_restart_in_a_new_mount_namespace_keeps_the_instance_id() -> None:
    # `ip netns exec` and systemd's PrivateTmp= start every agent in a new mount namespace: a restarted agent must
    # still be the same instance, or it could not resume its own lease.
    code = "from agent.statedir import instance_id; print(instance_id('deadbeef'))"
    there = subprocess.run(
        ["unshare", "--mount", sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert there.stdout.strip() == instance_id("deadbeef")
