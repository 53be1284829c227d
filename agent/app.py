"""The application fos keeps running on the active node: either a command fos supervises, or start/stop
commands (systemctl and the like). Stopping is always bounded: SIGTERM to the process group, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Protocol

import structlog

from .clock import within

log = structlog.get_logger("fos.app")


class AppError(Exception):
    """The application could not be started."""


class Application(Protocol):
    exited: asyncio.Event  # set when a supervised process ends on its own

    async def start(self, env: dict[str, str]) -> None: ...

    async def stop(self) -> None: ...

    def running(self) -> bool | None: ...  # None: fos cannot tell (start/stop commands)


async def _spawn(command: str | list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    full_env = {**os.environ, **env}
    if isinstance(command, str):  # what an operator would type: through the shell
        return await asyncio.create_subprocess_shell(command, env=full_env, start_new_session=True)
    return await asyncio.create_subprocess_exec(*command, env=full_env, start_new_session=True)


async def _terminate_group(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await within(proc.wait(), timeout)
    except TimeoutError:
        log.warning("app_stop_timeout", pid=proc.pid, timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    # Whatever the leader left behind in its group goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _write_pid(path: str, pid: int) -> None:
    with open(path, "w") as f:
        f.write(str(pid))


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running, not a zombie: an orphan that exited stays a zombie until some init reaps it, maybe never."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class SupervisedCommand:
    """Runs the command in its own session (process group). Its pid is kept in `pidfile`, so that an agent
    restarted after a crash can end the copy its predecessor left running instead of starting a second one."""

    def __init__(self, command: str | list[str], stop_timeout: float, pidfile: str | None = None) -> None:
        self.command = command
        self.stop_timeout = stop_timeout
        self.pidfile = pidfile
        self.exited = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self, env: dict[str, str]) -> None:
        if self.running():
            return
        self.exited = asyncio.Event()
        try:
            self._proc = await _spawn(self.command, env)
        except OSError as exc:
            raise AppError(f"cannot start application.command: {exc}") from None
        self._watch = asyncio.create_task(self._wait(self._proc))
        if self.pidfile:
            _write_pid(self.pidfile, self._proc.pid)
        log.info("app_started", pid=self._proc.pid)

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        log.info("app_exited", pid=proc.pid, code=code)
        self.exited.set()

    async def stop(self) -> None:
        if self._proc is not None:
            await _terminate_group(self._proc, self.stop_timeout)
            self._proc = None
        if self.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pidfile)

    def running(self) -> bool | None:
        return self._proc is not None and self._proc.returncode is None

    async def reap_orphan(self) -> int | None:
        """End the process group a crashed predecessor left running; return its pid, if there was one."""
        if not self.pidfile:
            return None
        pid = _read_pid(self.pidfile)
        if pid is None:
            return None
        # Only a session leader we started (sid == pid) is ours: a reused pid belongs to someone else.
        try:
            ours = pid > 1 and os.getsid(pid) == pid
        except ProcessLookupError:
            ours = False
        if ours:
            log.warning("app_orphan_found", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            end = asyncio.get_running_loop().time() + self.stop_timeout
            # Not our child: nothing to wait() on or be notified by, so poll.
            while asyncio.get_running_loop().time() < end and _alive(pid):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return pid if ours else None


class StartStopCommands:
    def __init__(
        self, start: str | list[str], stop: str | list[str], stop_timeout: float, start_timeout: float
    ) -> None:
        self.start_command, self.stop_command = start, stop
        self.stop_timeout, self.start_timeout = stop_timeout, start_timeout
        self.exited = asyncio.Event()  # never set: fos does not own the process

    async def _run(self, command: str | list[str], env: dict[str, str], timeout: float, what: str) -> int:
        proc = await _spawn(command, env)
        try:
            return await within(proc.wait(), timeout)
        except TimeoutError:
            await _terminate_group(proc, 1.0)
            raise AppError(f"application.{what} did not finish within {timeout:g}s") from None

    async def start(self, env: dict[str, str]) -> None:
        code = await self._run(self.start_command, env, self.start_timeout, "start")
        if code != 0:
            raise AppError(f"application.start exited with {code}")

    async def stop(self) -> None:
        try:
            code = await self._run(self.stop_command, {}, self.stop_timeout, "stop")
        except AppError as exc:
            log.warning("app_stop_failed", error=str(exc))
            return
        if code != 0:
            log.warning("app_stop_failed", code=code)

    def running(self) -> bool | None:
        return None


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
