"""The application fos keeps running on the active node: either a command fos supervises, or start/stop
commands (systemctl and the like). Stopping is always bounded: SIGTERM to the process group, then SIGKILL."""

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
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from . import keeper
from .clock import within
from .config import ConfigError

T = TypeVar("T")

log = structlog.get_logger("fos.app")


class AppError(Exception):
    """The application could not be started."""


class Application(Protocol):
    exited: asyncio.Event  # set when a supervised process ends on its own

    async def start(self, env: dict[str, str]) -> None: ...

    async def stop(self) -> None: ...

    def running(self) -> bool | None: ...  # None: fos cannot tell (start/stop commands)

    def detach(self) -> None: ...  # maintenance: the app must outlive this agent's exit (a restart adopts it)

    def unattached(self) -> bool: ...  # adopted, but it would not die with this agent: restart it when safe


KEEPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keeper.py")
DETACH_WAIT_S = 1.0  # how long detach() waits for the keeper to take its SIGUSR1
ORPHAN_GRACE = 0.5  # after the agent died: how long the keeper lets the application end on SIGTERM before SIGKILL
KILL_WAIT = 5.0  # a stop (which runs to its end even when cancelled) gives up on a process SIGKILL cannot end
_POLL = 0.02  # polling a process group that is not our child (nothing to wait() on)
ADOPTED_POLL_S = 0.2  # how soon an adopted application's exit is noticed


@dataclass(frozen=True)
class Credentials:
    """Who the application runs as: uid, primary gid, supplementary groups (as initgroups would set them)."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve_credentials(user: str | None, group: str | None) -> Credentials | None:
    """application.user / application.group (names or numeric ids) to ids; None when user is not set (the app
    runs as the agent does). Raises ConfigError, one line naming the key, when they cannot be used."""
    if user is None:
        if group is not None:
            raise ConfigError(f"application.group = {group!r} needs application.user: set it too")
        return None
    try:
        pw: pwd.struct_passwd | None = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ConfigError(
                f"application.user = {user!r} is not a user on this host: create it or name another"
            ) from None
        pw = None  # a bare uid without a passwd entry: allowed with an explicit group
    if group is None:
        if pw is None:
            raise ConfigError(f"application.user = {user!r} has no passwd entry: set application.group too")
        gid = pw.pw_gid
    elif group.isdigit():
        gid = int(group)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                f"application.group = {group!r} is not a group on this host: create it or name another"
            ) from None
    uid = int(user) if pw is None else pw.pw_uid
    groups = tuple(dict.fromkeys(os.getgrouplist(pw.pw_name, gid))) if pw is not None else (gid,)
    return Credentials(uid, gid, groups)


def _keeper_argv(command: str | list[str], creds: Credentials | None, pidfile: str | None = None) -> list[str]:
    """The keeper's command line (see keeper.py); a string command runs through /bin/sh, as typed. With a
    pidfile, the keeper re-attaches only to an adopter recorded there (see SupervisedCommand.adopt)."""
    argv = [sys.executable, "-I", "-S", KEEPER, str(os.getpid()), f"{ORPHAN_GRACE:g}", keeper.REATTACH]
    if pidfile is not None:
        argv.append(f"pidfile={os.path.abspath(pidfile)}")
    if creds is not None:
        argv += [f"uid={creds.uid}", f"gid={creds.gid}", "groups=" + ",".join(map(str, creds.groups))]
    return [*argv, "--", *(["/bin/sh", "-c", command] if isinstance(command, str) else command)]


async def _spawn(
    command: str | list[str], env: dict[str, str], creds: Credentials | None = None, pidfile: str | None = None
) -> asyncio.subprocess.Process:
    """Start `command` under a keeper in a new session; the returned process is the keeper, the session leader.

    PR_SET_PDEATHSIG (set by the keeper) fires when the *thread* that forked it exits, not the process: asyncio
    forks in subprocess.Popen, synchronously on the event-loop thread that calls this coroutine (the main thread
    under asyncio.run), never in a worker thread that may end while the agent lives. The keeper also rechecks its
    parent on the signal, so a thread's exit could not end the application anyway."""
    full_env = {**os.environ, **env}
    if isinstance(command, list) and shutil.which(command[0], path=full_env.get("PATH")) is None:
        raise AppError(f"cannot start application.command: {command[0]!r} is not an executable file")
    # The keeper inherits this thread's signal mask: with SIGUSR1/SIGUSR2 blocked, an early detach or re-attach
    # waits for the keeper's handlers instead of killing it (their default action). Here they are only delayed.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    try:
        argv = _keeper_argv(command, creds, pidfile)
        return await asyncio.create_subprocess_exec(*argv, env=full_env, start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


async def _to_the_end(aw: Awaitable[T]) -> T:
    """Await `aw` to its end even if the caller is cancelled meanwhile, then re-raise the cancellation: a stop or a
    kill abandoned half-way is how an application outlives a fence."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # ours (re-raised below), or the task's own (task.result() raises it)
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def _terminate_group(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """SIGTERM the process group `proc` leads, wait up to `timeout` for the whole group to end, then SIGKILL
    whatever is left, and wait until it is gone. Done even when the leader has already exited: its children are
    still ours. Returns False only if some of the group outlived SIGKILL by KILL_WAIT (stuck in the kernel, e.g.
    on a dead NFS mount)."""
    pgid, loop = proc.pid, asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if proc.returncode is not None and not keeper.group_alive(pgid):
        return True  # nothing left; the pgid may even be reused by now, so send nothing
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await within(proc.wait(), timeout)
    # The leader's children are not ours to wait() on: poll.
    while keeper.group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(_POLL)
    if proc.returncode is None or keeper.group_alive(pgid):
        log.warning("app_stop_timeout", pid=pgid, timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    # SIGKILL takes effect when each process next runs: wait until the whole group is really gone.
    kill_deadline = loop.time() + KILL_WAIT
    with contextlib.suppress(TimeoutError):
        await within(proc.wait(), KILL_WAIT)
    while keeper.group_alive(pgid) and loop.time() < kill_deadline:  # noqa: ASYNC110
        await asyncio.sleep(_POLL / 4)
    if proc.returncode is None or keeper.group_alive(pgid):
        log.error("app_unkillable", pid=pgid, waited=KILL_WAIT)
        return False
    return True


async def _end_foreign_group(pgid: int, timeout: float) -> None:
    """End a process group that is not our child (an orphan, an adopted application): SIGTERM, up to `timeout`
    for it to go, then SIGKILL. Not our child: nothing to wait() on or be notified by, so poll."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = loop.time() + timeout
    while loop.time() < end and keeper.group_alive(pgid):  # noqa: ASYNC110
        await asyncio.sleep(_POLL)
    if keeper.group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        end = loop.time() + KILL_WAIT
        while loop.time() < end and keeper.group_alive(pgid):  # noqa: ASYNC110
            await asyncio.sleep(_POLL)


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3 on (state, ppid, pgrp, ...) of /proc/PID/stat, after the command name; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a process (empty for a zombie or a kernel thread); None if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="surrogateescape") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat); None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


async def _identity(pid: int) -> tuple[int, list[str]] | None:
    """(start time, command line) of a running process; None if there is none. The kernel wakes a vfork parent
    before it sets the child's new command line, so a process seen right after its exec may show an empty one
    for a moment: wait for it (a zombie's stays empty)."""
    loop = asyncio.get_running_loop()
    settle = loop.time() + 0.5
    while True:
        fields, cmdline = _stat(pid), _cmdline(pid)
        if cmdline is None:
            return None
        if fields is None or cmdline or fields[0] == b"Z" or loop.time() > settle:
            break
        await asyncio.sleep(0.005)
    return None if fields is None else (int(fields[19]), cmdline)


def _pending(pid: int, sig: int) -> bool:
    """True while `sig` waits, sent but not yet taken, at process `pid` (ShdPnd of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("ShdPnd:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


async def _taken(pid: int, sig: int, timeout: float = 1.0) -> None:
    """Wait (bounded) until process `pid` has taken the signal `sig` we sent it."""
    end = asyncio.get_running_loop().time() + timeout
    while _pending(pid, sig) and asyncio.get_running_loop().time() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def _settle(future: asyncio.Future[None]) -> None:
    """Resolve `future` unless it already is (a reader callback may run again before it is removed)."""
    if not future.done():
        future.set_result(None)


def _write_pidfile(path: str, pid: int, argv: list[str]) -> None:
    """Record the session leader with what identifies it beyond its pid, which the kernel reuses: its start time
    and the command line it was given (not read back: it may not be set yet, see _identity)."""
    _write_record(path, {"pid": pid, "start_time": _start_time(pid), "cmdline": argv})


def _write_record(path: str, record: dict[str, Any]) -> None:
    """Replace the pidfile's content with `record`, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)  # never a half-written file after a crash


def _read_pidfile(path: str) -> dict[str, Any] | None:
    """The pidfile's record; an old file holding only a pid gives {"pid": N}, which cannot be verified."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    with contextlib.suppress(ValueError):
        record = json.loads(text)
        if isinstance(record, int):
            return {"pid": record}
        if isinstance(record, dict) and isinstance(record.get("pid"), int):
            return record
    return None


async def _still_ours(record: dict[str, Any]) -> bool:
    """The recorded session leader still runs: same pid, session leader, start time and command line."""
    pid = record["pid"]
    try:
        if pid <= 1 or os.getsid(pid) != pid:
            return False
    except ProcessLookupError:
        return False
    identity = await _identity(pid)
    return identity is not None and [record.get("start_time"), record.get("cmdline")] == list(identity)


def _live_supervisor(record: dict[str, Any]) -> int | None:
    """The pid of the agent that started the recorded keeper, if the keeper is still its child (so the agent
    lives: a keeper whose agent died ends its group, or is reparented). The agent's pid follows the keeper's
    path on the keeper's command line (see _keeper_argv)."""
    cmdline: list[str] = record.get("cmdline") or []
    try:  # any keeper.py: the agent that wrote the pidfile may have run from another install
        at = next(i for i, arg in enumerate(cmdline) if os.path.basename(arg) == os.path.basename(KEEPER))
        agent = int(cmdline[at + 1])
    except (StopIteration, ValueError, IndexError):
        return None
    fields = _stat(record["pid"])
    return agent if fields is not None and int(fields[1]) == agent else None


class SupervisedCommand:
    """Runs the command in its own session (process group), under a keeper that ends the group if the agent dies.
    The keeper's pid, start time and command line are kept in `pidfile`, so that an agent restarted after a crash
    can end a copy its predecessor left running instead of starting a second one."""

    def __init__(
        self,
        command: str | list[str],
        stop_timeout: float,
        pidfile: str | None = None,
        *,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        """`user`/`group`: application.user/.group (names or numeric ids). Raises ConfigError if unknown."""
        self.command = command
        self.stop_timeout = stop_timeout
        self.pidfile = pidfile
        self.creds = resolve_credentials(user, group)
        self.exited = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted: int | None = None  # the keeper's pid of an application adopted from a predecessor
        self._watch: asyncio.Task[None] | None = None
        self._unattached = False  # adopted from a keeper too old to re-attach (no REATTACH on its command line)

    async def start(self, env: dict[str, str]) -> None:
        """Start the command unless it runs. A cancellation while spawning kills what was spawned (asyncio kills
        the keeper, the keeper's death kills the application); once spawned, the bookkeeping below has no await."""
        if self.running():
            return
        self.exited = asyncio.Event()
        try:
            proc = await _spawn(self.command, env, self.creds, self.pidfile)
        except OSError as exc:
            raise AppError(f"cannot start application.command: {exc}") from None
        self._proc = proc
        self._watch = asyncio.create_task(self._wait(proc))
        if self.pidfile:
            _write_pidfile(self.pidfile, proc.pid, _keeper_argv(self.command, self.creds, self.pidfile))
        log.info("app_started", pid=proc.pid)

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        log.info("app_exited", pid=proc.pid, code=code)
        self.exited.set()

    async def stop(self) -> None:
        """End the whole process group (bounded by stop_timeout, then SIGKILL) and remove the pidfile. Runs to its
        end even if the caller is cancelled; the cancellation is re-raised afterwards."""
        await _to_the_end(self._stop())

    async def _stop(self) -> None:
        if self._adopted is not None:
            await _end_foreign_group(self._adopted, self.stop_timeout)
            if keeper.group_alive(self._adopted):
                return
            self._adopted, self._unattached = None, False
        if self._proc is not None:
            if not await _terminate_group(self._proc, self.stop_timeout):
                return  # still there: running() stays true, and the pidfile stays for the next agent
            self._proc = None
        if self.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pidfile)

    def running(self) -> bool | None:
        if self._adopted is not None:
            return not self.exited.is_set()  # followed by _watch_adopted, off the event loop
        return self._proc is not None and self._proc.returncode is None

    def detach(self) -> None:
        """Maintenance: let the application outlive this agent. SIGUSR1 tells the keeper to ignore the agent's
        death (keeper.py); the pidfile stays, so that the next agent adopts the application (adopt)."""
        pid = (
            self._adopted if self._adopted is not None else (self._proc.pid if self.running() and self._proc else None)
        )
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
        # Wait (bounded, DETACH_WAIT_S; microseconds normally) until the keeper took it: the agent exits next, and
        # a detach still pending then is only honoured if the keeper's SIGTERM handler finds it (keeper.py). Sync:
        # detach() runs at the agent's exit, where nothing else is left to run on the loop.
        end = time.monotonic() + DETACH_WAIT_S
        while _pending(pid, signal.SIGUSR1) and time.monotonic() < end:
            time.sleep(0.005)
        # asyncio kills a child still running when its transport is closed or collected (at the loop's end):
        # forget the Popen so that nothing of ours ends the keeper. No public API says "let it outlive us".
        transport = getattr(self._proc, "_transport", None)
        if transport is not None and hasattr(transport, "_proc"):
            transport._proc = None
        log.info("app_left_running", pid=pid)

    def unattached(self) -> bool:
        """The running application was adopted from a keeper that cannot re-attach (an older fos): it would not
        end with this agent. The runner restarts it under a keeper of its own once maintenance is over."""
        return self._unattached and self._adopted is not None

    async def adopt(self) -> int | None:
        """Take over the application a predecessor left running during maintenance instead of ending it: the
        pidfile's session leader, verified as reap_orphan does. Returns its pid, None if there is none (then
        reap_orphan cleans up). A ConfigError if its agent still runs. The adopted keeper is not our child: SIGUSR2
        re-attaches it to this agent (it ends the group when this process dies, see keeper.py); it is watched by
        polling, and stop() ends its group like an orphan's."""
        if not self.pidfile or (record := _read_pidfile(self.pidfile)) is None or not await _still_ours(record):
            return None
        if (agent := _live_supervisor(record)) is not None:
            raise ConfigError(
                f"the application in {self.pidfile} (pid {record['pid']}) is supervised by a running fos agent "
                f"(pid {agent}): stop that agent first, or give this one another --state-dir"
            )
        pid: int = record["pid"]
        self._adopted, self.exited = pid, asyncio.Event()
        self._watch = asyncio.create_task(self._watch_adopted(pid))
        if keeper.REATTACH in (record.get("cmdline") or []):
            # The keeper takes SIGUSR2 only from the adopter the pidfile names: record this agent first.
            _write_record(self.pidfile, {**record, "adopter": os.getpid()})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)  # the keeper now ends the application when this agent dies
            await _taken(pid, signal.SIGUSR2)  # so that a detach() later cannot overtake it
            log.warning("app_adopted", pid=pid)
        else:  # an older keeper, for which SIGUSR2 is fatal: it stays detached until the app is restarted
            self._unattached = True
            log.warning("app_adopted_detached", pid=pid, why="its keeper predates re-attaching")
        return pid

    async def _watch_adopted(self, pid: int) -> None:
        """Set `exited` once the adopted group is gone. Not our child: nothing to wait() on, so the keeper's pidfd
        (readable when it exits) on the loop, then the group's remains polled in a thread (a /proc scan each)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
            ended = loop.create_future()
            loop.add_reader(pidfd, _settle, ended)
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        while await asyncio.to_thread(keeper.group_alive, pid):  # noqa: ASYNC110 - daemons left by the app
            await asyncio.sleep(ADOPTED_POLL_S)
        log.info("app_exited", pid=pid)
        self.exited.set()

    async def reap_orphan(self) -> int | None:
        """End the process group a crashed predecessor left running; return its pid, if there was one. Only a
        session leader whose pid, start time and command line all match the pidfile is ours: a reused pid is
        someone else's, and an old pidfile with only a pid cannot tell, so it is left alone (and logged).
        Raises ConfigError, touching nothing, if the keeper is still the child of the agent that started it: that
        is no orphan but the live application of another agent sharing the state dir."""
        if not self.pidfile:
            return None
        record = _read_pidfile(self.pidfile)
        if record is None:
            return None
        pid: int = record["pid"]
        ours = await _still_ours(record)
        if ours and (agent := _live_supervisor(record)) is not None:
            raise ConfigError(
                f"the application in {self.pidfile} (pid {pid}) is supervised by a running fos agent (pid {agent}): "
                "stop that agent first, or give this one another --state-dir"
            )
        if ours:
            log.warning("app_orphan_found", pid=pid)
            await _end_foreign_group(pid, self.stop_timeout)
        elif record.get("start_time") is None:
            log.warning("app_pidfile_unverifiable", pid=pid, pidfile=self.pidfile)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return pid if ours else None


class StartStopCommands:
    """Start and stop commands (systemctl and the like): fos runs them, not the application. Each runs under a
    keeper in its own session, so a start script dies with a killed agent; the application itself must be tied
    to the agent's unit (see examples/fos.service)."""

    def __init__(
        self,
        start: str | list[str],
        stop: str | list[str],
        stop_timeout: float,
        start_timeout: float,
        *,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        """`user`/`group`: application.user/.group, which both commands run as. Raises ConfigError if unknown."""
        self.start_command, self.stop_command = start, stop
        self.stop_timeout, self.start_timeout = stop_timeout, start_timeout
        self.creds = resolve_credentials(user, group)
        self.exited = asyncio.Event()  # never set: fos does not own the process

    async def _run(self, command: str | list[str], env: dict[str, str], timeout: float, what: str) -> int:
        """Run `command` to its end; on timeout or cancellation its whole group is killed (and waited for) first."""
        proc = await _spawn(command, env, self.creds)
        try:
            return await within(proc.wait(), timeout)
        except TimeoutError:
            await _to_the_end(_terminate_group(proc, 1.0))
            raise AppError(f"application.{what} did not finish within {timeout:g}s") from None
        except asyncio.CancelledError:
            await _to_the_end(_terminate_group(proc, 1.0))
            raise

    async def start(self, env: dict[str, str]) -> None:
        """Run the start command; AppError if it fails or exceeds start_timeout. Cancelled: the script is killed."""
        code = await self._run(self.start_command, env, self.start_timeout, "start")
        if code != 0:
            raise AppError(f"application.start exited with {code}")

    async def stop(self) -> None:
        """Run the stop command to its end (bounded by stop_timeout) even if the caller is cancelled meanwhile."""
        await _to_the_end(self._stop())

    async def _stop(self) -> None:
        try:
            code = await self._run(self.stop_command, {}, self.stop_timeout, "stop")
        except AppError as exc:
            log.warning("app_stop_failed", error=str(exc))
            return
        if code != 0:
            log.warning("app_stop_failed", code=code)

    def running(self) -> bool | None:
        return None

    def detach(self) -> None:
        """Nothing to do: the application is the system's (tie it to the agent's unit with care, see README)."""

    def unattached(self) -> bool:
        return False


class NoApplication:
    """Only the common IP moves (the application runs on both nodes and follows the address)."""

    def __init__(self) -> None:
        self.exited = asyncio.Event()

    async def start(self, env: dict[str, str]) -> None:
        return None

    async def stop(self) -> None:
        return None

    def running(self) -> bool | None:
        return None

    def detach(self) -> None:
        return None

    def unattached(self) -> bool:
        return False
