"""Time of `fos mirror` on the namespace test bed: a first copy of a FILES-file / SIZE tree, a run with no change,
and a run after changing 1 % of the files.

Two nodes m1, m2, each with its own sshd and its own installation directory (tests/support/sshd.py); m1 holds
the lease in a shared SQLite database; each run is the real command (`fos mirror --node m1`), so the time
includes starting Python, the database reads before and after, ssh and rsync. Files are random (incompressible)
and spread over 100 directories.

    .venv/bin/python bench/mirror.py [--files 10000] [--megabytes 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save, table

from lease import SqlLeaseStore
from tests.support.netns import Lan
from tests.support.sshd import ReplicationBed


def make_tree(root: str, files: int, total_bytes: int) -> None:
    size = total_bytes // files
    block = os.urandom(size * 16)  # a window into random bytes per file: incompressible, cheap to make
    open(os.path.join(root, ".fos-sentinel"), "w").close()
    for i in range(files):
        d = os.path.join(root, f"d{i % 100:02d}")
        os.makedirs(d, exist_ok=True)
        start = (i * 7919) % (len(block) - size)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(block[start : start + size])


def timed_mirror(bed: ReplicationBed) -> dict[str, Any]:
    started = time.monotonic()
    out = bed.fos("m1", "mirror", timeout=3600)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"fos mirror failed: {out.stdout} {out.stderr}")
    fields = dict(w.split("=", 1) for w in out.stdout.split()[2:] if "=" in w)
    return {"seconds": seconds, "files": int(fields["files"]), "bytes": int(fields["bytes"])}


async def hold(bed: ReplicationBed) -> None:
    store = SqlLeaseStore(bed.dsn, dialect="sqlite", call_timeout=5.0)
    await store.init_schema()
    assert (await store.try_acquire("rp", "m1", 3_600_000)).acquired
    await store.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--megabytes", type=int, default=1024)
    args = p.parse_args()
    lan = Lan()
    work = tempfile.mkdtemp(prefix="fos-bench-mirror-")
    os.chmod(work, 0o755)
    bed = None
    try:
        bed = ReplicationBed(lan, work)
        asyncio.run(hold(bed))
        t0 = time.monotonic()
        make_tree(os.path.join(work, "m1"), args.files, args.megabytes * 1024 * 1024)
        print(f"tree of {args.files} files, {args.megabytes} MiB made in {time.monotonic() - t0:.1f}s", flush=True)
        rows = [{"run": "first copy", **timed_mirror(bed)}]
        rows.append({"run": "no change", **timed_mirror(bed)})
        for i in range(0, args.files, 100):  # 1 % of the files get new contents (and a new size)
            with open(os.path.join(work, "m1", f"d{i % 100:02d}", f"f{i:05d}.bin"), "ab") as f:
                f.write(b"changed")
        rows.append({"run": "1% changed", **timed_mirror(bed)})
        for r in rows:
            r["MB_per_s"] = r["bytes"] / 1e6 / r["seconds"]
        print(
            table(
                rows,
                [("run", "run"), ("seconds", "seconds"), ("files", "files"), ("bytes", "bytes"), ("MB_per_s", "MB/s")],
            )
        )
        print("saved", save("mirror", {"files": args.files, "megabytes": args.megabytes, "runs": rows}))
    finally:
        if bed is not None:
            bed.close()
        lan.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
