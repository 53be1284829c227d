"""Process checks shared by the tests."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie. A process may exit between any two reads of /proc (reading
    its stat then fails with ESRCH or ENOENT): that is "not alive", never an error."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
