"""The agent's state directory, locked for the agent's life, and the agent's instance id.

Two agents for the same node and cluster on one host share the application's pidfile: the second one's orphan
reaper would end the first one's live application. So the first thing `fos run` does, before any reaping, is take
an exclusive lock on `<dir>/<cluster>-<node>.lock`; a second agent is refused with one line naming the holder.
The lock is an flock(2) on an open file: the kernel releases it when the agent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import socket

from .config import ConfigError

INSTANCE_ID_MAX = 64


def _machine_tag() -> str:
    """8 hex digits for this boot of this machine: a cloned VM boots with another boot id. (Not the mount
    namespace: `ip netns exec` and systemd's PrivateTmp= give every start a new one, and a restarted agent must
    keep its id to resume its own lease.)"""
    boot = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return hashlib.sha256(boot.encode()).hexdigest()[:8]


def instance_id(token: str | None = None) -> str:
    """The id of an agent process, "<host>_<machine tag>_<token>", at most 64 characters (the host name is shortened to
    fit). With the state dir's token, an agent restarted on the same machine since its last boot keeps its id
    (and may resume its own unexpired lease); a cloned VM (another boot id), a second process with another state
    dir (another token) or an agent without one (a random token) never shares it."""
    suffix = f"_{_machine_tag()}_{token or secrets.token_hex(4)}"
    host = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in socket.gethostname())
    return (host.lstrip("._-") or "host")[: INSTANCE_ID_MAX - len(suffix)] + suffix


class StateDir:
    """`--state-dir` for one node of one cluster. Use: `state.lock()` once at start, before reaping orphans;
    `state.pidfile` for the application; `state.unlock()` (or process exit) at the end."""

    def __init__(self, path: str, cluster: str, node: str) -> None:
        """Nothing is touched until lock()."""
        self.path, self.cluster, self.node = path, cluster, node
        self.lockfile = os.path.join(path, f"{cluster}-{node}.lock")
        self.pidfile = os.path.join(path, f"{cluster}-{node}.pid")
        self.unproven_mark = os.path.join(path, f"{cluster}-{node}.failback-unproven")  # see agent/failback.py
        self._fd: int | None = None

    def lock(self) -> None:
        """Create the directory if needed and take the lock, recording our pid in the lock file. Raises
        ConfigError (one line, naming --state-dir and the fix) if the directory cannot be used or another
        process holds the lock. Idempotent while held."""
        if self._fd is not None:
            return
        try:
            os.makedirs(self.path, mode=0o755, exist_ok=True)
            fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(self._unusable(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"another fos agent for node {self.node} of cluster {self.cluster} is running with state dir "
                f"{self.path} (pid {holder}): stop it first, or give this one another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def instance_id(self) -> str:
        """This node's agent instance id, kept in `<dir>/<cluster>-<node>.instance` (call after lock(): the lock
        makes the read-or-create safe)."""
        path = os.path.join(self.path, f"{self.cluster}-{self.node}.instance")
        token = ""
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path) as f:
            token = f.read().strip()
        if not (len(token) == 8 and all(c in "0123456789abcdef" for c in token)):
            token = secrets.token_hex(4)
            try:
                with open(path, "w") as f:
                    f.write(token + "\n")
            except OSError as exc:
                raise ConfigError(self._unusable(exc)) from None
        return instance_id(token)

    def unlock(self) -> None:
        """Release the lock (the file stays: removing it would race with a new agent locking it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDir:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def _unusable(self, exc: OSError) -> str:
        if exc.errno in (errno.EACCES, errno.EPERM):
            fix = "run fos as a user that may write it, or pass another --state-dir"
            return f"--state-dir {self.path} cannot be used: permission denied: {fix}"
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return f"--state-dir {self.path} is not a directory: remove what is there, or pass another --state-dir"
        return f"--state-dir {self.path} cannot be used: {exc.strerror}: pass another --state-dir"


def _read_holder(fd: int) -> str:
    """The pid the lock holder wrote, or "unknown" (it may not have written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return "unknown"
