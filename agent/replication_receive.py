"""`fos mirror receive`: the receiving side of `fos mirror`, installed as an ssh forced command.

In the fos user's ~/.ssh/authorized_keys on every node (one line, see README "Replication"):

    command="fos mirror receive --config /etc/fos/fos.toml",restrict ssh-ed25519 AAAA... fos-mirror

sshd then runs this command for every connection with that key, whatever the client asked for, and puts the
client's command in SSH_ORIGINAL_COMMAND. Like rsync's rrsync script it lets only rsync's receiving server side
run, with options from a short allow-list, into one of the configured replication paths; unlike rrsync it first
asks the lease database and refuses while this node holds the lease (a push must never overwrite the active
node's installation), and refuses when the database cannot be asked (fail closed); while rsync runs it keeps
asking, and kills rsync if this node takes the lease meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import Awaitable, Callable

from lease import LeaseState, StoreError

from .replication import PROBE_COMMAND

# Short options rsync's client sends to a receiving server (rrsync's list, without the ones that name files);
# `e` carries the protocol's capability letters and comes last.
_SHORT = re.compile(r"-[ACDEHIJKLNORSUWXbcdgklmnopqrstuvxyz]+(e[.A-Za-z]*)?")
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
_LONG_NUMBER = re.compile(r"--(max-delete|timeout|bwlimit)=\d+")


class ReceiveRefused(Exception):
    """The forced command refuses this connection: one line for the sender's log, exit 1."""


def within(path: str, allowed: tuple[str, ...]) -> bool:
    """`path` is one of the allowed paths or below one (plain string comparison of normalised absolute paths;
    a `..` component is never within)."""
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    clean = "/" + "/".join(p for p in path.split("/") if p and p != ".")
    for root in allowed:
        base = "/" + "/".join(p for p in root.split("/") if p and p != ".")
        if clean == base or clean.startswith(base.rstrip("/") + "/"):
            return True
    return False


def server_argv(command: str, allowed: tuple[str, ...]) -> list[str]:
    """The rsync server command to run for the client's SSH_ORIGINAL_COMMAND: only `rsync --server` receiving
    (never --sender), only allow-listed options, and exactly one destination within `allowed`. ReceiveRefused
    (naming what was refused) otherwise."""
    if not allowed:
        raise ReceiveRefused("replication.paths is empty on this node: nothing may be received")
    try:
        words = shlex.split(command)
    except ValueError:
        raise ReceiveRefused("the command is not a valid shell word list") from None
    if words[:2] != ["rsync", "--server"]:
        shown = command[:60] or "(none)"
        raise ReceiveRefused(f"only rsync may run with this key (asked for {shown!r})")
    if "." not in words[2:]:
        raise ReceiveRefused("the rsync command has no '.' separator before its destination")
    dot = words.index(".", 2)
    for option in words[2:dot]:
        if option == "--sender":
            raise ReceiveRefused("this key only receives: sending files back (--sender) is refused")
        if option not in _LONG and not _SHORT.fullmatch(option) and not _LONG_NUMBER.fullmatch(option):
            raise ReceiveRefused(f"rsync option {option!r} is not allowed by fos mirror receive")
    targets = words[dot + 1 :]
    if len(targets) != 1:
        raise ReceiveRefused(f"expected exactly one destination, got {len(targets)}")
    if not within(targets[0], allowed):
        raise ReceiveRefused(
            f"destination {targets[0]!r} is outside replication.paths ({', '.join(allowed)}): add it there"
        )
    return ["rsync", *words[1:]]


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


async def receive(argv: list[str], read_lease: Callable[[], Awaitable[LeaseState]], me: str, poll: float) -> int:
    """Run rsync's server side (argv, already checked) on this process's stdin/stdout, and ask the lease every
    `poll` seconds while it runs: if this node takes the lease meanwhile, rsync is killed before it can rename
    more files into place (with --delay-updates, usually before any). ReceiveRefused if this node holds the
    lease at the start; a database that cannot be asked during the run does not stop it (this node cannot take
    the lease without the database either). Returns rsync's exit status, or 1 when it was stopped."""
    refuse_if_holder(await read_lease(), me)
    proc = await asyncio.create_subprocess_exec(*argv)  # inherits stdin/stdout: the ssh channel to the sender
    try:
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(proc.wait()), poll)
            except TimeoutError:
                pass
            try:
                refuse_if_holder(await read_lease(), me)
            except StoreError:
                continue
    except (ReceiveRefused, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
