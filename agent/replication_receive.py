"""`fos mirror receive`: the receiving side of `fos mirror`, installed as an ssh forced command.

In the fos user's ~/.ssh/authorized_keys on every node (one line, see README "Replication"):

    command="fos mirror receive --config /etc/fos/fos.toml",restrict ssh-ed25519 AAAA... fos-mirror

sshd then runs this command for every connection with that key, whatever the client asked for, and puts the
client's command in SSH_ORIGINAL_COMMAND. Like rsync's rrsync script it lets only rsync's receiving server side
run, with options from a short allow-list (never protect-args), into one of the configured replication paths
(symlinks resolved); unlike rrsync it first asks the lease database and accepts only a push from the node that
holds the lease, in the epoch the sender names (`fos-mirror-push NODE EPOCH rsync --server ...`), never while
this node holds it, and refuses when the database cannot be asked (fail closed); while rsync runs it keeps
asking, and kills rsync if the lease stops showing that sender and epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lease import LeaseState, StoreError

from .replication import PROBE_COMMAND, PUSH_MARKER

# Short options rsync's client sends to a receiving server (rrsync's list, without the ones that name files),
# and without: s (protect-args: the real options and destination would come over the protocol, after this
# check), D (devices), o/g (owner/group: the sender uses -rlpt, never -a), K/L/k (follow symlinks on the
# receiver). `e` carries the protocol's capability letters and comes last.
_SHORT = re.compile(r"-[ACEHIJNORSUWXbcdlmnprtuvxyz]+(e[.A-Za-z]*)?", re.ASCII)
_LONG = {
    "--server",
    "--delete",
    "--delete-delay",
    "--delete-after",
    "--delete-during",
    "--delay-updates",
    "--stats",
    "--numeric-ids",
    "--dry-run",
}
_LONG_NUMBER = re.compile(r"--(max-delete|timeout|bwlimit)=([0-9]{1,12})", re.ASCII)
_REFUSED_LONG = ("--protect-args", "--secluded-args", "--no-protect-args", "--no-secluded-args")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
_EPOCH = re.compile(r"[0-9]{1,18}", re.ASCII)


class ReceiveRefused(Exception):
    """The forced command refuses this connection: one line for the sender's log, exit 1."""


@dataclass(frozen=True)
class Push:
    """A checked push: who sends (its node name and lease epoch, checked against the lease) and the rsync
    server command to run."""

    sender: str
    epoch: int
    argv: list[str]


def _real(path: str) -> str:
    """The path with every existing symlink resolved (os.path.realpath resolves the nearest existing ancestor
    and appends the rest, which holds no symlink yet)."""
    return os.path.realpath(path)


def within(path: str, allowed: tuple[str, ...]) -> bool:
    """`path` is one of the allowed paths or below one, after resolving symlinks on both sides (a symlink inside
    an allowed directory that points out of it is not within); a relative path or a `..` component never is."""
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    real = _real(path)
    for root in allowed:
        base = _real(root)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False


def _check_option(option: str, max_delete: int) -> int | None:
    """ReceiveRefused for an option not on the allow-list; the N of --max-delete=N, else None."""
    if option in _LONG or _SHORT.fullmatch(option):
        return None
    number = _LONG_NUMBER.fullmatch(option)
    if number is None:
        raise ReceiveRefused(f"rsync option {option!r} is not allowed by fos mirror receive")
    if number.group(1) != "max-delete":
        return None
    limit = int(number.group(2))
    if limit > max_delete:
        raise ReceiveRefused(
            f"--max-delete={limit} is above this node's replication.max_delete ({max_delete}): lower it on the sender"
        )
    return limit


def _bundle(option: str) -> str:
    """The option letters of a short bundle (before the `e` capability part), '' for a long option."""
    if not option.startswith("-") or option.startswith("--"):
        return ""
    return option[1:].split("e", 1)[0]


def server_argv(command: str, allowed: tuple[str, ...], max_delete: int) -> list[str]:
    """The rsync server command to run for `rsync --server ...`: only receiving (never --sender), only
    allow-listed options (no protect-args), --delay-updates always, any --delete* only with --max-delete=N and
    N <= this node's `max_delete`, and exactly one destination within `allowed` (symlinks resolved).
    ReceiveRefused (naming what was refused) otherwise."""
    return _server_words(_split(command), allowed, max_delete)


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        raise ReceiveRefused("the command is not a valid shell word list") from None


def _server_words(words: list[str], allowed: tuple[str, ...], max_delete: int) -> list[str]:
    if not allowed:
        raise ReceiveRefused("replication.paths is empty on this node: nothing may be received")
    if words[:2] != ["rsync", "--server"]:
        shown = " ".join(words)[:60] or "(none)"
        raise ReceiveRefused(f"only rsync may run with this key (asked for {shown!r})")
    for word in words[2:]:  # first, before anything else: with protect-args the rest comes over the protocol
        if word in _REFUSED_LONG or "s" in _bundle(word):
            raise ReceiveRefused(
                f"rsync option {word!r} (protect-args) is refused: it would hide the real options from this check"
            )
    if "." not in words[2:]:
        raise ReceiveRefused("the rsync command has no '.' separator before its destination")
    dot = words.index(".", 2)
    options = words[2:dot]
    limits = []
    for option in options:
        if option == "--sender":
            raise ReceiveRefused("this key only receives: sending files back (--sender) is refused")
        if (limit := _check_option(option, max_delete)) is not None:
            limits.append(limit)
    if "--delay-updates" not in options:
        raise ReceiveRefused("--delay-updates is required: a half-copied tree must never be live")
    if any(o.startswith("--delete") for o in options) and not limits:
        raise ReceiveRefused(
            f"deletions need --max-delete=N with N <= this node's replication.max_delete ({max_delete})"
        )
    targets = words[dot + 1 :]
    if len(targets) != 1:
        raise ReceiveRefused(f"expected exactly one destination, got {len(targets)}")
    if not within(targets[0], allowed):
        raise ReceiveRefused(
            f"destination {targets[0]!r} is outside replication.paths ({', '.join(allowed)}): add it there"
        )
    return ["rsync", *words[1:]]


def parse_push(command: str, allowed: tuple[str, ...], max_delete: int) -> Push:
    """SSH_ORIGINAL_COMMAND as sent by fos mirror: `PUSH_MARKER NODE EPOCH rsync --server ... . DEST` (rsync's
    --rsync-path carries the first three words). Parsed strictly; ReceiveRefused otherwise."""
    words = _split(command)
    if len(words) < 3 or words[0] != PUSH_MARKER:
        shown = command[:60] or "(none)"
        raise ReceiveRefused(f"only fos mirror may push with this key (asked for {shown!r})")
    if not _NODE_NAME.fullmatch(words[1]) or not _EPOCH.fullmatch(words[2]):
        raise ReceiveRefused(f"the push names no valid node and epoch ({words[1][:30]!r} {words[2][:20]!r})")
    return Push(words[1], int(words[2]), _server_words(words[3:], allowed, max_delete))


def check_push(lease: LeaseState, me: str, sender: str, epoch: int) -> None:
    """ReceiveRefused unless the lease is held, by `sender` (not by `me`), with exactly `epoch`: only the
    current holder, in its current tenure, may overwrite this node's copy."""
    if lease.held_by(me):
        raise ReceiveRefused(
            f"node {me} holds the lease (epoch {lease.epoch}): a push to the active node is refused; "
            "run fos mirror on the active node"
        )
    if not lease.held:
        raise ReceiveRefused(f"nobody holds the lease: a push from {sender} (epoch {epoch}) is refused")
    if lease.holder != sender or lease.epoch != epoch:
        raise ReceiveRefused(
            f"the push is from {sender} epoch {epoch} but the lease is held by {lease.holder} epoch {lease.epoch}"
        )


def refuse_if_holder(lease: LeaseState, me: str) -> None:
    """ReceiveRefused while `me` holds the lease: the active node's files are never overwritten."""
    if lease.held_by(me):
        raise ReceiveRefused(
            f"node {me} holds the lease (epoch {lease.epoch}): a push to the active node is refused; "
            "run fos mirror on the active node"
        )


def is_probe(command: str) -> bool:
    """`fos doctor`'s check that this forced command is installed (it answers instead of rsync)."""
    return command.strip() == PROBE_COMMAND


async def receive(push: Push, read_lease: Callable[[], Awaitable[LeaseState]], me: str, poll: float) -> int:
    """Run rsync's server side (push.argv, already checked) on this process's stdin/stdout, and ask the lease
    every `poll` seconds while it runs: if the lease stops showing push.sender at push.epoch (this node took
    it, or the sender lost it), rsync is killed before it can rename more files into place (with
    --delay-updates, usually before any). ReceiveRefused if check_push fails at the start; a database that
    cannot be asked during the run does not stop it (no node can take the lease without the database either).
    Returns rsync's exit status, or 1 when it was stopped."""
    check_push(await read_lease(), me, push.sender, push.epoch)
    proc = await asyncio.create_subprocess_exec(*push.argv)  # inherits stdin/stdout: the ssh channel to the sender
    try:
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(proc.wait()), poll)
            except TimeoutError:
                pass
            try:
                check_push(await read_lease(), me, push.sender, push.epoch)
            except StoreError:
                continue
    except (ReceiveRefused, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
