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
the application keeps running, and every SIGTERM is a stop sent to the group. SIGUSR2 re-attaches it to whoever
sent it (the agent that adopted the application, see app.py): the keeper then ends the group when that process
dies, as for the first agent. A later SIGUSR1 detaches it again. Only the agent served may detach it, and only an
adopter that wrote its pid into the pidfile (key "adopter"; `pidfile=PATH` on the command line) before signalling may
re-attach it: an application that uses these signals itself, or a monitor signalling the whole group, is ignored
(said on stderr). Both signals stay blocked and a thread takes them with sigtimedwait, one at a time (the kernel
delivers the lower-numbered SIGUSR1 first when both pend; the agent waits for each to be taken before the next, so
none ever pends behind the other); sigtimedwait names the sender, and a pidfd watches an adopter. The agent
spawns the keeper with both already blocked, so neither can kill it (their default action) before it is ready;
the application's child unblocks everything it inherited. The keeper says it understands SIGUSR2 by
`reattach=usr2` on its command line: an adopter never sends it to an older keeper, for which it would be fatal.

Stdlib only and no import from the agent package: it runs with -I -S, as root or whoever runs the agent, before
anything of the application is set up. This module is also imported by agent/app.py for `group_alive`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
ORPHANED = 125  # exit status when the agent was already gone before anything started
CANNOT_RUN = 127  # as a shell says for a command it cannot run
REATTACH = "reattach=usr2"  # on the command line: this keeper re-attaches to its adopter on SIGUSR2
_INHERITED_BLOCK = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}  # what the application must not inherit blocked


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
        options.pop(REATTACH.split("=")[0], None)  # a capability announced to adopters, nothing to set
        self.pidfile = options.pop("pidfile", None)  # where an adopter records itself before its SIGUSR2
        self.uid = int(options["uid"]) if "uid" in options else None
        self.gid = int(options["gid"]) if "gid" in options else None
        self.groups = [int(g) for g in options.get("groups", "").split(",") if g]


def _run_application(spec: Spec, keeper: int) -> None:
    """In the forked child (SIGTERM blocked): become the application. Never returns."""
    try:
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1):  # not Python's, nor ours
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INHERITED_BLOCK)  # a stop sent meanwhile now ends the child
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


class _Supervisor:
    """Who the keeper serves: the agent that started it, nobody (detached), or the agent that adopted it."""

    def __init__(self, agent_pid: int) -> None:
        self.agent_pid = agent_pid
        self.detached = False
        self.adopter: int | None = None  # set (by the watch thread) while re-attached to an adopting agent
        self.adopter_gone = False
        # Held by the signal thread while it takes and applies a signal, and by the SIGTERM handler while it judges
        # the agent's death: a detach sent before the agent died is applied before that death is judged.
        # Reentrant: a second SIGTERM may interrupt the handler (in the same thread).
        self.lock = threading.RLock()

    def gone(self) -> bool:
        """True once the agent the keeper serves has died (so a SIGTERM means: end the group)."""
        if self.adopter is not None:
            return self.adopter_gone
        return not self.detached and os.getppid() != self.agent_pid


def _recorded_adopter(pidfile: str | None) -> int | None:
    """The pid an adopting agent wrote into the pidfile (key "adopter") before it sent SIGUSR2; None if none."""
    if pidfile is None:
        return None
    try:
        with open(pidfile) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    adopter = record.get("adopter") if isinstance(record, dict) else None
    return adopter if isinstance(adopter, int) else None


def _accepted(info: signal.struct_siginfo, sup: _Supervisor, pidfile: str | None) -> bool:
    """Whether a SIGUSR1/SIGUSR2 comes from the one process allowed to send it: SIGUSR1 (detach) only from the
    agent served now; SIGUSR2 (re-attach) only from the adopter recorded in the pidfile. Anything else (an
    application's own use of the signals, a monitor signalling the whole group) is ignored, and said so."""
    if info.si_signo == signal.SIGUSR1:
        served = sup.adopter if sup.adopter is not None else (None if sup.detached else sup.agent_pid)
        ok = served is not None and info.si_pid == served
    else:
        ok = info.si_pid == _recorded_adopter(pidfile)
    if not ok:
        name = signal.Signals(info.si_signo).name
        print(
            f"fos keeper: ignored {name} from pid {info.si_pid}: not the agent it serves or its adopter",
            file=sys.stderr,
            flush=True,
        )
    return ok


def _take(signals: set[signal.Signals], timeout: float) -> signal.struct_siginfo | None:
    """sigtimedwait, without its garbage: CPython returns an uninitialised siginfo when a wait interrupted by a
    signal (a SIGCONT) finds its timeout already over."""
    info = signal.sigtimedwait(signals, timeout)
    return info if info is not None and info.si_signo in signals else None


def _take_detach(sup: _Supervisor, pidfile: str | None) -> None:
    """Apply a SIGUSR1 still pending (the caller holds sup.lock): a detach the agent sent before it died."""
    info = _take({signal.SIGUSR1}, 0)
    if info is not None and _accepted(info, sup, pidfile):
        sup.adopter, sup.detached = None, True


def _watch_signals(sup: _Supervisor, pidfile: str | None = None) -> None:
    """The keeper's signal thread. SIGUSR1 and SIGUSR2 stay blocked in every thread, so only sigtimedwait here (or
    the SIGTERM handler's, see main) takes them, one at a time: SIGUSR1 detaches (maintenance: the agent leaves the
    application running); SIGUSR2 makes its sender the agent served (an adopter); each only from the process
    allowed to send it (_accepted). When the adopter dies (its pidfd turns readable) the keeper sends itself a
    SIGTERM, which the main thread's handler turns into the end of the group, unless a detach from the adopter
    was still pending."""
    pidfd: int | None = None
    watched: int | None = None  # the adopter the pidfd belongs to
    poller = select.poll()
    while True:
        with sup.lock:  # short waits: the SIGTERM handler waits for this lock
            info = _take({signal.SIGUSR1, signal.SIGUSR2}, 0.0 if pidfd is not None else 0.05)
            if info is not None and _accepted(info, sup, pidfile):
                if info.si_signo == signal.SIGUSR1:
                    sup.adopter, sup.detached = None, True
                else:
                    try:
                        fd: int | None = os.pidfd_open(info.si_pid)
                    except ProcessLookupError:  # it died right after it signalled us
                        fd = None
                    sup.adopter, sup.adopter_gone, sup.detached = info.si_pid, fd is None, False
                    if fd is None:
                        os.kill(os.getpid(), signal.SIGTERM)
                    else:
                        if pidfd is not None:
                            poller.unregister(pidfd)
                            os.close(pidfd)
                        pidfd, watched = fd, info.si_pid
                        poller.register(pidfd, select.POLLIN)
            if pidfd is not None and sup.adopter != watched:  # detached (here or by the SIGTERM handler)
                poller.unregister(pidfd)
                os.close(pidfd)
                pidfd = watched = None
        if pidfd is not None and poller.poll(200) and sup.adopter == watched:
            sup.adopter_gone = True
            os.kill(os.getpid(), signal.SIGTERM)  # the handler applies a pending detach first
            poller.unregister(pidfd)
            os.close(pidfd)
            pidfd = watched = None


def main(argv: list[str]) -> int:
    spec = Spec(argv)
    sup = _Supervisor(spec.agent_pid)
    stopping = False

    def on_sigterm(signum: int, frame: object) -> None:
        nonlocal stopping
        if sup.gone():
            with sup.lock:  # the signal thread is not between taking a signal and applying it
                _take_detach(sup, spec.pidfile)
            if sup.gone():
                raise _Orphaned
        stopping = True  # the agent's stop reached the whole group: the application has it too

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})  # the signal thread's alone
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
        watch = threading.Thread(target=_watch_signals, args=(sup, spec.pidfile), daemon=True)
        watch.start()  # SIGTERM blocked there too
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _, status = os.waitpid(app, 0)  # PEP 475: resumed after a handler that returns
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code
    except _Orphaned:
        _end_group(spec.grace, app)
        return ORPHANED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
