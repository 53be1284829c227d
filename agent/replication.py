"""`fos mirror`: copy the installation from the node holding the lease to the other nodes, with rsync over ssh.

Safety rules (each one a test in tests/test_agent_replication*.py):
- Only the lease holder sends, and only to nodes that do not hold the lease: the sender reads the lease before
  the run and again after it; a different holder or epoch afterwards makes the run a failure (`lost_lease`).
- The receiving side runs `fos mirror receive` as an ssh forced command (agent/replication_receive.py): it
  refuses while its own node holds the lease and restricts rsync's server side to the configured paths.
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
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from lease import LeaseState

from .config import Config, ConfigError, NodeConfig, ReplicationConfig

log = structlog.get_logger("fos.replication")

EVENT_MIRROR = "mirror"
EVENT_STALE = "replication_stale"
RSYNC_OK, RSYNC_VANISHED, RSYNC_MAX_DELETE = 0, 24, 25
PROBE_COMMAND = "fos-mirror-probe"  # what `fos doctor` sends to see the forced command answer


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


def peer_host(node: NodeConfig) -> str:
    """Where a node is reached by ssh: the host of its url, else its name."""
    host = urlsplit(node.url).hostname if node.url else None
    return host or node.name


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
    """Deletions only in a source directory that holds the sentinel file, and only when max_delete > 0."""
    return rep.max_delete > 0 and os.path.isdir(path) and os.path.isfile(os.path.join(path, rep.sentinel))


def rsync_argv(rep: ReplicationConfig, path: str, host: str, deletions: bool, dry_run: bool) -> list[str]:
    """The rsync command that copies `path` to the same path on `host`."""
    is_dir = os.path.isdir(path)
    source = path.rstrip("/") + "/" if is_dir else path
    argv = ["rsync", "-a", "--delay-updates", "--stats", f"--timeout={max(30, int(rep.timeout))}"]
    if deletions:
        argv += ["--delete-delay", f"--max-delete={rep.max_delete}"]
    if dry_run:
        argv.append("--dry-run")
    for pattern in rep.excludes:
        argv.append(f"--exclude={pattern}")
    argv += ["-e", " ".join(_quote(a) for a in ssh_command(rep)), source, f"{host}:{source}"]
    return argv


def _quote(arg: str) -> str:
    # rsync splits -e on spaces and honours quotes; our arguments have no quotes (paths are checked absolute).
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


async def copy_path(rep: ReplicationConfig, path: str, host: str, dry_run: bool) -> PathRun:
    """One rsync run of one path; never raises for rsync's own failures (they are in the result)."""
    deletions = deletions_allowed(rep, path)
    if not deletions and rep.max_delete > 0 and os.path.isdir(path):  # noqa: ASYNC240 - one stat
        log.warning("mirror_without_deletions", path=path, sentinel=rep.sentinel, why="sentinel file missing")
    try:
        code, out, err = await run_command(rsync_argv(rep, path, host, deletions, dry_run), rep.timeout)
    except FileNotFoundError:
        return PathRun(path, 127, 0, 0, 0, deletions, "rsync is not installed: apt-get install rsync")
    stats = parse_stats(out)
    error = " ".join(line.strip() for line in err.splitlines() if line.strip())[-300:] if code else ""
    return PathRun(path, code, stats["files"], stats["bytes"], stats["deleted"], deletions, error)


async def copy_to(rep: ReplicationConfig, target: NodeConfig, dry_run: bool) -> tuple[str, list[PathRun]]:
    """Every configured path to one peer, in order; stops at the first failed path. (result, runs)."""
    runs = []
    result = "ok"
    for path in rep.paths:
        run = await copy_path(rep, path, peer_host(target), dry_run)
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
) -> list[TargetResult]:
    """Copy the configured paths from `me` (which must hold the lease, of expected_epoch if given) to the other
    nodes (or to `to`). Reads the lease before and after each peer's copy; records one `mirror` event per
    peer (not for a dry run). MirrorRefused before anything is copied when `me` is not the holder."""
    rep = cfg.replication
    if not rep.paths:
        raise ConfigError("replication.paths is empty: list the directories of the installation to copy")
    before = await store.read(cfg.cluster, timeout=cfg.call_timeout)
    targets = choose_targets(cfg, me, before, to)
    if expected_epoch is not None and before.epoch != expected_epoch:
        raise MirrorRefused(f"the lease epoch is {before.epoch}, not {expected_epoch}: this tenure has ended")
    results = []
    for target in targets:
        started = time.monotonic()
        result, runs = await copy_to(rep, target, dry_run)
        after = await store.read(cfg.cluster, timeout=cfg.call_timeout)
        message = "; ".join(f"{r.path}: {r.error}" for r in runs if r.error)
        if not same_lease(before, after, me):
            result = "lost_lease"
            message = f"the lease changed during the run (now {after.holder} epoch {after.epoch}); {message}"
        elif dry_run and result == "ok":
            result = "dry_run"
        outcome = TargetResult(
            node=target.name,
            result=result,
            files=sum(r.files for r in runs),
            bytes=sum(r.bytes for r in runs),
            deleted=sum(r.deleted for r in runs),
            duration_s=time.monotonic() - started,
            message=message.strip("; "),
        )
        log.info("mirror_run", epoch=before.epoch, **parse_detail(outcome.detail()))
        if not dry_run:
            await store.record_event(cfg.cluster, me, EVENT_MIRROR, before.epoch, outcome.detail())
        results.append(outcome)
        if result == "lost_lease":
            break  # no further peers: this node is no longer the one to copy from
    return results
