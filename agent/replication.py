"""`fos mirror`: copy the installation from the node holding the lease to the other nodes, with rsync over ssh.

Safety rules (each one a test in tests/test_agent_replication*.py):
- Only the lease holder sends, and only to nodes that do not hold the lease: the sender reads the lease before
  the run and again after it; a different holder or epoch afterwards makes the run a failure (`lost_lease`).
- The receiving side runs `fos mirror receive` as an ssh forced command (agent/replication_receive.py): the
  sender names itself and its epoch in the remote command (--rsync-path); the receiver accepts only that holder
  in that epoch, never while its own node holds the lease, and restricts rsync's server side to the paths.
- A target whose host is this machine is dropped; `fos mirror --node` must name this machine (agent/node.py).
- Deletions on the receiver only with the sentinel file present in the source directory (an unmounted or
  emptied source never wipes the standby), and at most max_delete per run (rsync --max-delete; exit 25).
- --delay-updates: changed files are renamed into place together at the end, so a half copy is never live.
- rsync exit 24 (source files vanished during the run) is a success: the next run copies the new state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from lease import LeaseState

from .config import Config, ConfigError, NodeConfig, ReplicationConfig, peer_host

log = structlog.get_logger("fos.replication")

EVENT_MIRROR = "mirror"
EVENT_STALE = "replication_stale"
RSYNC_OK, RSYNC_VANISHED, RSYNC_MAX_DELETE = 0, 24, 25
PROBE_COMMAND = "fos-mirror-probe"  # what `fos doctor` sends to see the forced command answer
PUSH_MARKER = "fos-mirror-push"  # the remote command of a push: PUSH_MARKER NODE EPOCH rsync --server ...
STAT_TIMEOUT = 10.0  # seconds a source's stat() may take (a hung network mount) before the run fails


class MirrorRefused(Exception):
    """The run must not happen (this node is not the holder, the target holds the lease): one line, exit 1."""


@dataclass(frozen=True)
class PathRun:
    """One rsync run of one configured path to one peer."""

    path: str
    returncode: int
    files: int
    bytes: int
    deleted: int
    deletions: bool  # were deletions allowed (sentinel present, max_delete > 0)
    error: str


@dataclass(frozen=True)
class TargetResult:
    """The outcome for one peer: result is ok, failed, max_delete, lost_lease or dry_run."""

    node: str
    result: str
    files: int
    bytes: int
    deleted: int
    duration_s: float
    message: str = ""

    @property
    def good(self) -> bool:
        return self.result == "ok"

    def detail(self) -> str:
        """The event detail: key=value words, parsed back by parse_detail()."""
        text = (
            f"to={self.node} result={self.result} files={self.files} bytes={self.bytes} deleted={self.deleted} "
            f"duration={self.duration_s:.2f}s"
        )
        return f"{text} {self.message}"[:480] if self.message else text


def parse_detail(detail: str | None) -> dict[str, str]:
    """The key=value words of a mirror event's detail (the leading ones; the free-text message is ignored)."""
    out: dict[str, str] = {}
    for word in (detail or "").split():
        key, sep, value = word.partition("=")
        if not sep:
            break
        out[key] = value
    return out


def judge_exit(code: int) -> str:
    """rsync's exit status as a run result: 0 and 24 (files vanished while copying) are ok; 25 means the
    --max-delete limit stopped deletions; anything else failed."""
    if code in (RSYNC_OK, RSYNC_VANISHED):
        return "ok"
    if code == RSYNC_MAX_DELETE:
        return "max_delete"
    return "failed"


def choose_targets(cfg: Config, me: str, lease: LeaseState, to: str | None) -> list[NodeConfig]:
    """The nodes to copy to: every other node, or only `to`. MirrorRefused unless `me` holds the lease (never
    from a standby) or when a target holds it (never to the holder); ConfigError for an unknown --to."""
    if not lease.held_by(me):
        holder = lease.holder if lease.held else "nobody"
        raise MirrorRefused(
            f"node {me} does not hold the lease (holder: {holder}, epoch {lease.epoch}): fos mirror copies only "
            "from the active node; run it there"
        )
    if to is not None:
        target = cfg.node(to)
        if target.name == me:
            raise ConfigError(f"--to {to} is this node: give the node to copy to")
        targets = [target]
    else:
        targets = [n for n in cfg.nodes if n.name != me]
    for t in targets:
        if lease.held_by(t.name):  # cannot happen while we hold it; kept as the rule's own statement
            raise MirrorRefused(f"node {t.name} holds the lease: fos never copies to the active node")
    return targets


def ssh_command(rep: ReplicationConfig) -> list[str]:
    """ssh with the configured user, port, key and known hosts; never asks for a password or a host key."""
    argv = ["ssh", "-p", str(rep.ssh_port), "-l", rep.ssh_user, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    argv += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "StrictHostKeyChecking=yes"]
    if rep.ssh_key:
        argv += ["-i", rep.ssh_key, "-o", "IdentitiesOnly=yes"]
    if rep.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={rep.known_hosts}"]
    return argv


def deletions_allowed(rep: ReplicationConfig, path: str) -> bool:
    """Deletions only in a source directory that holds the sentinel file, and only when max_delete > 0.
    Blocking (stat calls): async callers use source_state()."""
    return rep.max_delete > 0 and os.path.isdir(path) and os.path.isfile(os.path.join(path, rep.sentinel))


@dataclass(frozen=True)
class SourceState:
    """What the stat calls found about one source path."""

    is_dir: bool
    sentinel: bool  # deletions allowed: the sentinel is there and max_delete > 0


async def source_state(rep: ReplicationConfig, path: str, timeout: float = STAT_TIMEOUT) -> SourceState:
    """The source's stat results, taken in a worker thread so a hung network mount never blocks the event loop.
    TimeoutError after `timeout` seconds (the thread is abandoned; it ends when the mount answers)."""

    def stat() -> SourceState:
        return SourceState(os.path.isdir(path), deletions_allowed(rep, path))

    async with asyncio.timeout(timeout):
        return await asyncio.to_thread(stat)


def rsync_argv(
    rep: ReplicationConfig,
    path: str,
    host: str,
    deletions: bool,
    dry_run: bool,
    *,
    is_dir: bool,
    sender: str,
    epoch: int,
) -> list[str]:
    """The rsync command that copies `path` to the same path on `host`, naming `sender` and its lease `epoch`
    in the remote command (checked by fos mirror receive). -rlpt, not -a: no owners, groups or devices."""
    source = path.rstrip("/") + "/" if is_dir else path
    argv = ["rsync", "-rlpt", "--delay-updates", "--stats", f"--timeout={max(30, int(rep.timeout))}"]
    if deletions:
        argv += ["--delete-delay", f"--max-delete={rep.max_delete}"]
    if dry_run:
        argv.append("--dry-run")
    for pattern in rep.excludes:
        argv.append(f"--exclude={pattern}")
    argv += [f"--rsync-path={PUSH_MARKER} {sender} {epoch} rsync"]
    target = f"[{host}]" if ":" in host else host  # an IPv6 address: rsync splits host:path at the first colon
    argv += ["-e", " ".join(_quote(a) for a in ssh_command(rep)), source, f"{target}:{source}"]
    return argv


def _quote(arg: str) -> str:
    # rsync splits -e on spaces and honours quotes; config load refuses quotes, backslashes and whitespace in
    # ssh_key and known_hosts, and ssh_user is a plain account name, so nothing here needs more than this.
    return f'"{arg}"' if " " in arg else arg


_STAT = {
    "files": re.compile(r"Number of regular files transferred: ([\d,]+)"),
    "bytes": re.compile(r"Total transferred file size: ([\d,]+)"),
    "deleted": re.compile(r"Number of deleted files: ([\d,]+)"),
}


def parse_stats(text: str) -> dict[str, int]:
    """files, bytes and deleted from rsync --stats output (0 when a line is missing)."""
    out = {}
    for key, pattern in _STAT.items():
        m = pattern.search(text)
        out[key] = int(m.group(1).replace(",", "")) if m else 0
    return out


async def run_command(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run argv in its own process group; (exit status, stdout, stderr). At the deadline or on cancellation
    the whole group is killed before this returns or raises (status -9 on timeout)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return -9, "", f"stopped after {timeout:g}s (replication.timeout)"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def copy_path(
    rep: ReplicationConfig,
    path: str,
    host: str,
    dry_run: bool,
    sender: str,
    epoch: int,
    allow_deletions: bool = True,
    stat_timeout: float = STAT_TIMEOUT,
) -> PathRun:
    """One rsync run of one path; never raises for rsync's own failures (they are in the result). A source
    whose stat does not answer within stat_timeout is a failed run (status -1), never a hung event loop.
    allow_deletions False: no delete options at all (deletions paused for this peer)."""
    try:
        state = await source_state(rep, path, stat_timeout)
    except TimeoutError:
        why = f"the source did not answer stat() within {stat_timeout:g}s (a hung mount?): not copied"
        log.warning("mirror_source_hung", path=path, timeout=stat_timeout)
        return PathRun(path, -1, 0, 0, 0, False, why)
    deletions = state.sentinel and allow_deletions
    if not state.sentinel and rep.max_delete > 0 and state.is_dir:
        log.warning("mirror_without_deletions", path=path, sentinel=rep.sentinel, why="sentinel file missing")
    argv = rsync_argv(rep, path, host, deletions, dry_run, is_dir=state.is_dir, sender=sender, epoch=epoch)
    try:
        code, out, err = await run_command(argv, rep.timeout)
    except FileNotFoundError:
        return PathRun(path, 127, 0, 0, 0, deletions, "rsync is not installed: apt-get install rsync")
    stats = parse_stats(out)
    error = " ".join(line.strip() for line in err.splitlines() if line.strip())[-300:] if code else ""
    return PathRun(path, code, stats["files"], stats["bytes"], stats["deleted"], deletions, error)


async def copy_to(
    rep: ReplicationConfig, target: NodeConfig, dry_run: bool, sender: str, epoch: int, allow_deletions: bool = True
) -> tuple[str, list[PathRun]]:
    """Every configured path to one peer, in order; stops at the first failed path. (result, runs)."""
    runs = []
    result = "ok"
    for path in rep.paths:
        run = await copy_path(rep, path, peer_host(target), dry_run, sender, epoch, allow_deletions)
        runs.append(run)
        verdict = judge_exit(run.returncode)
        if verdict != "ok":
            result = verdict
            if verdict == "failed":
                break
    return result, runs


def same_lease(before: LeaseState, after: LeaseState, me: str) -> bool:
    """The run stayed under one tenure: `me` still holds the lease with the epoch it had before."""
    return after.held_by(me) and after.epoch == before.epoch


class MirrorStore(Protocol):
    """What a mirror run needs from the lease store (lease.SqlLeaseStore has it)."""

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState: ...

    async def record_event(
        self,
        cluster: str,
        node: str | None,
        kind: str,
        epoch: int | None,
        detail: str | None,
        *,
        timeout: float | None = None,
    ) -> None: ...


async def mirror(
    cfg: Config,
    store: MirrorStore,
    me: str,
    to: str | None = None,
    dry_run: bool = False,
    expected_epoch: int | None = None,
    paused: frozenset[str] = frozenset(),
    by_operator: bool = False,
    is_local: Callable[[str], bool] | None = None,
) -> list[TargetResult]:
    """Copy the configured paths from `me` (which must hold the lease, of expected_epoch if given) to the other
    nodes (or to `to`). Reads the lease before and after each peer's copy; records one `mirror` event per
    peer (not for a dry run). MirrorRefused before anything is copied when `me` is not the holder.
    paused: peers copied without any delete option (after a max_delete run; the detail says deletes=paused).
    by_operator: a run by hand (`fos mirror`), marked by=operator in the detail; it lifts a pause.
    is_local(host): does host name this machine (default: resolved in a worker thread); such a target is
    dropped (never push to ourselves), and an explicit --to naming one is refused."""
    rep = cfg.replication
    if not rep.paths:
        raise ConfigError("replication.paths is empty: list the directories of the installation to copy")
    before = await store.read(cfg.cluster, timeout=cfg.call_timeout)
    targets = choose_targets(cfg, me, before, to)
    if expected_epoch is not None and before.epoch != expected_epoch:
        raise MirrorRefused(f"the lease epoch is {before.epoch}, not {expected_epoch}: this tenure has ended")
    targets = await _remote_only(targets, is_local, explicit=to is not None)
    results = []
    for target in targets:
        started = time.monotonic()
        allow = target.name not in paused
        result, runs = await copy_to(rep, target, dry_run, me, before.epoch, allow_deletions=allow)
        after = await store.read(cfg.cluster, timeout=cfg.call_timeout)
        message = "; ".join(f"{r.path}: {r.error}" for r in runs if r.error)
        if not same_lease(before, after, me):
            result = "lost_lease"
            message = f"the lease changed during the run (now {after.holder} epoch {after.epoch}); {message}"
        elif dry_run and result == "ok":
            result = "dry_run"
        marks = ("by=operator " if by_operator else "") + ("" if allow else "deletes=paused ")
        if result == "max_delete":
            message = (
                "deletions stopped at max_delete: scheduled runs to this node copy without deletions until an "
                f"operator runs fos mirror by hand; {message}"
            )
        elif not allow:
            message = f"deletions paused since a max_delete run: run fos mirror by hand to resume; {message}"
        outcome = TargetResult(
            node=target.name,
            result=result,
            files=sum(r.files for r in runs),
            bytes=sum(r.bytes for r in runs),
            deleted=sum(r.deleted for r in runs),
            duration_s=time.monotonic() - started,
            message=(marks + message.strip("; ")).strip(),
        )
        log.info("mirror_run", epoch=before.epoch, **parse_detail(outcome.detail()))
        if not dry_run:
            await store.record_event(cfg.cluster, me, EVENT_MIRROR, before.epoch, outcome.detail())
        results.append(outcome)
        if result == "lost_lease":
            break  # no further peers: this node is no longer the one to copy from
    return results


async def _remote_only(
    targets: list[NodeConfig], is_local: Callable[[str], bool] | None, explicit: bool
) -> list[NodeConfig]:
    """The targets whose host is not this machine (a url naming a local address would push to ourselves)."""
    if is_local is None:
        from .node import names_this_machine

        try:
            async with asyncio.timeout(STAT_TIMEOUT):
                local = await asyncio.to_thread(lambda: [names_this_machine(peer_host(t)) for t in targets])
        except TimeoutError:
            raise MirrorRefused(
                f"resolving the peers' hosts took over {STAT_TIMEOUT:g}s: check this machine's resolver"
            ) from None
    else:
        local = [is_local(peer_host(t)) for t in targets]
    kept = []
    for target, here in zip(targets, local, strict=True):
        if not here:
            kept.append(target)
            continue
        if explicit:
            raise MirrorRefused(f"node {target.name}'s host {peer_host(target)} is this machine: nothing to copy")
        log.warning("mirror_target_dropped", node=target.name, host=peer_host(target), why="it is this machine")
    return kept
