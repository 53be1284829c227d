"""The C heap of a long-running agent (issue #14, footprint: an idle agent's resident memory).

Python keeps small objects in its own arenas, but everything larger (code objects, module dicts, the ODBC
driver's buffers) comes from glibc malloc, which keeps freed memory mapped:

- each thread that calls malloc gets an arena of its own (up to 8 per core), and the agent's database call
  threads each pinned a few hundred KB that way: `limit_arenas` makes them share the main one (those threads
  make a handful of calls a second, so they never wait on each other for the heap);
- the start-up's temporary allocations (imports, config parsing, the first connections) leave free pages inside
  the heap that plain free() does not return: `trim` gives them back (malloc_trim), `trim_every` repeats it now
  and then, since an idle agent has no other moment at which its heap shrinks.

Elsewhere than on glibc (musl) these are no-ops that report False.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter number
TRIM_EVERY_S = 60.0  # between two trims of an idle agent's heap; one costs well under a millisecond


def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_libc = _glibc()


def limit_arenas(count: int = 1) -> bool:
    """At most `count` malloc arenas from now on (threads started later share them). True if applied."""
    return _libc is not None and _libc.mallopt(M_ARENA_MAX, count) == 1


def trim() -> bool:
    """Return the C heap's free pages to the system. True if anything was released."""
    return _libc is not None and _libc.malloc_trim(0) == 1


async def trim_every(interval: float = TRIM_EVERY_S, first: float = 5.0) -> None:
    """Trim `first` seconds from now (the start-up has allocated what it needs by then), then every `interval`
    seconds, until cancelled."""
    await asyncio.sleep(first)
    while True:
        trim()
        await asyncio.sleep(interval)
