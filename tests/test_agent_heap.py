"""agent/heap.py: the C heap of a long-running agent (issue #14, footprint). Each check runs in a fresh
interpreter, whose heap and threads this test process does not disturb."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import heap
from tests.support.minimal_agent import renewing_agent

ROOT = str(Path(__file__).resolve().parent.parent)

# malloc arenas of threads: 64 MB reservations whose unused part is an anonymous mapping without any access
# (thread stacks have only a page-sized guard without access).
ARENAS = """
def arenas(pid="self"):
    count = 0
    for line in open(f"/proc/{pid}/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        count += parts[1] == "---p" and len(parts) < 6 and hi - lo > 1 << 20
    return count
"""


def python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("limited", [False, True])
def test_limit_arenas_makes_threads_share_the_main_malloc_arena(limited: bool) -> None:
    out = python(
        ARENAS
        + f"""
import threading
from agent import heap
if {limited}:
    assert heap.limit_arenas(1)
barrier, keep = threading.Barrier(5), []
def work():
    keep.append(bytearray(100_000))  # from malloc (not Python's small-object allocator), in this thread
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
barrier.wait()  # all four alive at once: none can take over an arena another one left
print(arenas())
for t in threads:
    t.join()
"""
    )
    assert int(out) == (0 if limited else 4)


def test_trim_returns_the_free_pages_inside_the_heap() -> None:
    out = python(
        """
from agent import heap
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
blocks = [bytearray(4000) for _ in range(8000)]  # 32 MB from malloc's heap, not mmap'ed one by one
full = anon_mb()
blocks = blocks[::16]  # every 16th kept: the heap cannot shrink from its top, the free space is in between
freed = anon_mb()
assert heap.trim()
print(full, freed, anon_mb())
"""
    )
    full, freed, trimmed = (float(x) for x in out.split())
    assert freed > full - 5, "free() alone gave the pages back: nothing for trim to do, the test shows nothing"
    assert trimmed < freed - 20, (full, freed, trimmed)


async def test_trim_every_trims_first_after_the_start_up_then_at_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(heap, "trim", lambda: trims.append(loop.time()) or True)
    began = loop.time()
    task = asyncio.create_task(heap.trim_every(interval=0.1, first=0.2))
    await asyncio.sleep(0.45)
    task.cancel()
    assert len(trims) == 3
    assert 0.2 <= trims[0] - began < 0.3 and all(0.1 <= b - a < 0.2 for a, b in itertools.pairwise(trims))


def test_fos_run_keeps_its_database_call_threads_in_the_main_malloc_arena(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(ARENAS, namespace)
    with open(tmp_path / "stderr", "w") as err, renewing_agent(tmp_path, err) as pid:
        with open(f"/proc/{pid}/status") as f:
            threads = int(next(line for line in f if line.startswith("Threads:")).split()[1])
        arenas = namespace["arenas"](pid)  # type: ignore[operator]
    assert threads >= 3  # the loop and the database call threads, which did call malloc by now
    assert arenas == 0
