"""The boundary between the agent's event loop and blocking netlink / raw-socket work.

Two promises hold for every call that goes through `settled`:
- The work is never abandoned mid-way. If the awaiting task is cancelled, the worker thread is asked to stop
  (through a threading.Event the work checks between packets) and waited for; only then does the cancellation
  propagate. So once a cancelled call has returned, the kernel's address state no longer changes behind the
  caller's back, and no packet is sent any more.
- Every failure comes out as a NetopsError with a one-line message, never as a raw NetlinkError or OSError.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import NetopsError
from .rtnl import DumpInterrupted

T = TypeVar("T")
DUMP_RETRIES = 5


async def settled(work: Callable[[], T], what: str, stop: threading.Event | None = None) -> T:
    """Run `work()` in a worker thread and return its result; `what` names it for error messages ("add
    10.0.0.5/24 on eth0"). On cancellation: set `stop`, wait for the thread to end, then re-raise the
    CancelledError (a second cancel while waiting is absorbed: the wait is bounded by the work itself)."""
    future = asyncio.ensure_future(asyncio.to_thread(_translated, work, what))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except Exception:
                break
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller gets
        raise


def _translated(work: Callable[[], T], what: str) -> T:
    try:
        return work()
    except NetopsError:
        raise
    except Exception as exc:
        raise describe(exc, what) from exc


def describe(exc: BaseException, what: str) -> NetopsError:
    """A one-line NetopsError for a failure of `what`, saying what to do where there is something to do."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.EPERM, errno.EACCES):
        return NetopsError(f"cannot {what}: not permitted; fos needs CAP_NET_ADMIN and CAP_NET_RAW: run it as root")
    if code in (errno.ENODEV, errno.ENXIO):
        return NetopsError(f"cannot {what}: the interface disappeared meanwhile; check it with `fos iflist`")
    if isinstance(code, int) and code > 0:
        # the error's own text where it has one (DumpInterrupted's says what to do), else the errno's
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else os.strerror(code)
    else:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    return NetopsError(f"cannot {what}: {reason}")


def dump_retrying(dump: Callable[[], T]) -> T:
    """A netlink dump (addresses, links), repeated when a concurrent change interrupted it."""
    for _ in range(DUMP_RETRIES - 1):
        try:
            return dump()
        except DumpInterrupted:
            continue
    return dump()
