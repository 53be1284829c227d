"""The keeper: the one process fos starts for an application command, so that the application dies with its agent.

Run by agent/app.py, never by hand, as

    python -I -S keeper.py AGENT_PID GRACE [uid=N gid=N groups=N,N,...] -- COMMAND ARG...

in a new session (its pid is the session and process-group id of everything the application starts). It asks the
kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), then checks that the parent is still AGENT_PID (the
agent may have died before the prctl). It forks the application in its own process group, switches that child to
the application's user (setgroups, setgid, setuid; the ambient capability set cleared too), gives the child
PR_SET_PDEATHSIG = SIGKILL (so it dies if the keeper is killed) and execs the command; then it waits and exits with
the application's status (128 + N for a signal N).

Why a process of our own between agent and application: PR_SET_PDEATHSIG reaches only the direct child, and only
if that child is still a direct child; a shell command forks, daemons double-fork. When the agent dies the keeper
ends the whole process group: SIGTERM, up to GRACE seconds for it to go, then SIGKILL. SIGTERM while the agent
lives is the agent's own stop (sent to the whole group): the keeper then just keeps waiting for the application.
SIGUSR1 detaches the keeper (an agent stopped during maintenance mode): from then on the agent's death is ignored,
the application keeps running, and every SIGTERM is a stop sent to the group (by the agent that adopted it).

Stdlib only and no import from the agent package: it runs with -I -S, as root or whoever runs the agent, before
anything of the application is set up. This module is also imported by agent/app.py for `group_alive`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
ORPHANED = 125  # exit status when the agent was already gone before anything started
CANNOT_RUN = 127  # as a shell says for a command it cannot run


class _Orphaned(Exception):
    """The agent died: raised from the SIGTERM handler to break out of waitpid."""


def _prctl(option: int, arg2: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def group_alive(pgid: int, besides: int = 0) -> bool:
    """True while any process other than `besides` runs in process group `pgid`. A zombie counts as gone: an
    orphan reparented to an init that does not reap stays a zombie forever."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == besides:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


class Spec:
    """The keeper's command line: whom to watch, how long to wait, who the application runs as, what it is."""

    def __init__(self, argv: list[str]) -> None:
        """Parse `argv` (without the program name). Raises ValueError on anything malformed."""
        split = argv.index("--")
        head, self.command = argv[:split], argv[split + 1 :]
        if len(head) < 2 or not self.command:
            raise ValueError("usage: keeper.py AGENT_PID GRACE [uid=N gid=N groups=N,...] -- COMMAND ...")
        self.agent_pid, self.grace = int(head[0]), float(head[1])
        options = dict(item.split("=", 1) for item in head[2:])
        self.uid = int(options["uid"]) if "uid" in options else None
        self.gid = int(options["gid"]) if "gid" in options else None
        self.groups = [int(g) for g in options.get("groups", "").split(",") if g]


def _run_application(spec: Spec, keeper: int) -> None:
    """In the forked child (SIGTERM blocked): become the application. Never returns."""
    try:
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):  # Python's own dispositions, not the app's
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a stop sent meanwhile now ends the child
        if spec.uid is not None:
            _become(spec.uid, spec.gid if spec.gid is not None else os.getgid(), spec.groups)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid: a credential change clears it
        if os.getppid() != keeper:
            os._exit(ORPHANED)
        os.execvp(spec.command[0], spec.command)
    except OSError as exc:
        as_user = "" if spec.uid is None else f" as uid {spec.uid} (application.user)"
        print(f"fos keeper: cannot run {spec.command[0]!r}{as_user}: {exc.strerror}", file=sys.stderr, flush=True)
    except BaseException:  # never let the child run on as a second keeper
        pass
    os._exit(CANNOT_RUN)


def _become(uid: int, gid: int, groups: list[int]) -> None:
    """Run as uid/gid/groups with no capabilities. Only what differs is changed: an agent that already runs as
    that user (a systemd User= with ambient capabilities) may not call setgroups, and needs only the clearing."""
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)  # else a non-root agent's ambient caps pass on at exec
    if set(os.getgroups()) - {os.getegid()} != set(groups) - {gid}:
        os.setgroups(groups)
    if os.getresgid() != (gid, gid, gid):
        os.setresgid(gid, gid, gid)
    if os.getresuid() != (uid, uid, uid):
        os.setresuid(uid, uid, uid)  # from root: the kernel clears the permitted, effective and ambient sets


def _end_group(grace: float, app: int) -> None:
    """The agent is gone: SIGTERM our process group, wait up to `grace`, SIGKILL it (the keeper included)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    me = os.getpid()
    os.killpg(me, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if app:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(app, os.WNOHANG)  # reap the application, so that it does not count as alive
        if not group_alive(me, besides=me):
            break
        time.sleep(0.01)
    os.killpg(me, signal.SIGKILL)


def main(argv: list[str]) -> int:
    spec = Spec(argv)
    stopping = False
    detached = False

    def on_sigterm(signum: int, frame: object) -> None:
        nonlocal stopping
        if os.getppid() != spec.agent_pid and not detached:
            raise _Orphaned
        stopping = True  # the agent's stop reached the whole group: the application has it too

    def on_detach(signum: int, frame: object) -> None:
        nonlocal detached
        detached = True  # maintenance: the agent exits and leaves the application running (a restart adopts it)

    signal.signal(signal.SIGUSR1, on_detach)
    signal.signal(signal.SIGTERM, on_sigterm)
    app = 0
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != spec.agent_pid:
            return ORPHANED
        if stopping:
            return 128 + signal.SIGTERM
        keeper = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the child must not run our handler
        app = os.fork()
        if app == 0:
            _run_application(spec, keeper)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _, status = os.waitpid(app, 0)  # PEP 475: resumed after a handler that returns
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code
    except _Orphaned:
        _end_group(spec.grace, app)
        return ORPHANED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
