"""fos mirror end to end on the namespace test bed: a real sshd in each node's namespace whose key login runs
`fos mirror receive`, real rsync, and a shared SQLite lease database whose rows the tests write directly."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.config import load
from agent.replication import ssh_command
from agent.replication_schedule import ReplicationSchedule
from lease import SqlLeaseStore
from tests.support.netns import Lan, wait_for
from tests.support.sshd import ReplicationBed

pytestmark = pytest.mark.netns


@pytest.fixture
def bed(lan: Lan) -> Iterator[ReplicationBed]:
    with tempfile.TemporaryDirectory(prefix="fos-repl-") as work:
        os.chmod(work, 0o755)
        b = ReplicationBed(lan, work)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
async def store(bed: ReplicationBed) -> AsyncIterator[SqlLeaseStore]:
    s = SqlLeaseStore(bed.dsn, dialect="sqlite", call_timeout=5.0)
    await s.init_schema()
    await s.ensure_cluster("rp")
    yield s
    await s.close()


async def hold(store: SqlLeaseStore, node: str, ttl_ms: int = 60_000) -> int:
    result = await store.try_acquire("rp", node, ttl_ms)
    assert result.acquired
    return result.epoch


async def mirror_events(store: SqlLeaseStore) -> list[str]:
    return [e.detail or "" for e in await store.list_events("rp", limit=50) if e.kind == "mirror"]


INSTALL = {
    ".fos-sentinel": "",
    "conf/server.xml": "<server/>",
    "lib/app.jar": "x" * 5000,
    "logs/server.log": "node-specific",
    "bin/app.pid": "123",
}


async def test_mirror_copies_the_holders_installation_to_the_peer_without_the_excludes(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.write_config(excludes=["logs/", "*.pid"])
    bed.put("m1", INSTALL)
    epoch = await hold(store, "m1")
    out = bed.fos("m1", "mirror")
    assert out.returncode == 0, out.stderr
    assert "to=m2 result=ok" in out.stdout
    assert bed.tree("m2") == {".fos-sentinel", "conf/server.xml", "lib/app.jar"}
    assert bed.read("m2", "lib/app.jar") == "x" * 5000
    events = [e for e in await store.list_events("rp", limit=10) if e.kind == "mirror"]
    assert len(events) == 1 and events[0].epoch == epoch and events[0].node == "m1"
    assert "result=ok" in (events[0].detail or "") and "files=3" in (events[0].detail or "")


async def test_deletions_on_the_peer_are_bounded_by_max_delete(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", {".fos-sentinel": "", "keep.txt": "k"})
    bed.put("m2", {f"old/{i}.txt": "o" for i in range(10)})
    await hold(store, "m1")
    bed.write_config(max_delete=3)
    out = bed.fos("m1", "mirror")
    assert out.returncode == 1
    assert "result=max_delete" in out.stdout
    assert len([p for p in bed.tree("m2") if p.startswith("old/")]) == 7  # exactly max_delete went
    bed.write_config(max_delete=100)
    out = bed.fos("m1", "mirror")
    assert out.returncode == 0, out.stdout + out.stderr
    assert bed.tree("m2") == {".fos-sentinel", "keep.txt"}


async def test_an_empty_source_without_the_sentinel_never_wipes_the_peer(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.put("m2", {".fos-sentinel": "", "conf/server.xml": "<server/>", "lib/app.jar": "x"})
    await hold(store, "m1")  # m1's installation is empty: say an unmounted volume
    out = bed.fos("m1", "mirror")
    assert out.returncode == 0, out.stderr
    assert bed.tree("m2") == {".fos-sentinel", "conf/server.xml", "lib/app.jar"}
    bed.put("m1", {"other.txt": "new"})  # files but still no sentinel: copies, deletes nothing
    assert bed.fos("m1", "mirror").returncode == 0
    assert bed.tree("m2") == {".fos-sentinel", "conf/server.xml", "lib/app.jar", "other.txt"}


async def test_a_standby_never_pushes(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", INSTALL)
    bed.put("m2", {"conf/server.xml": "<m2/>"})
    await hold(store, "m2")
    out = bed.fos("m1", "mirror")
    assert out.returncode == 1
    assert "m1 does not hold the lease (holder: m2" in out.stderr
    assert bed.tree("m2") == {"conf/server.xml"}
    assert await mirror_events(store) == []


async def hold_epoch(store: SqlLeaseStore) -> int:
    return (await store.read("rp")).epoch


def raw_push(bed: ReplicationBed, destination: str, epoch: int = 1, *options: str) -> subprocess.CompletedProcess[str]:
    """rsync from m1 to m2 with the mirror key, naming m1 and `epoch`, bypassing fos mirror's own checks."""
    rep = load(bed.config).replication
    ssh = " ".join(ssh_command(rep))
    src = bed.app + "/"
    path = f"--rsync-path=fos-mirror-push m1 {epoch} rsync"
    argv = ["rsync", "-rlpt", "--delay-updates", path, *options, "-e", ssh, src]
    return bed.fs["m1"].run([*argv, f"{bed.fs['m2'].host.ip}:{destination}"])


async def test_the_receiver_refuses_a_push_while_it_holds_the_lease(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", {"conf/server.xml": "<m1 newer/>"})
    bed.put("m2", {"conf/server.xml": "<m2/>"})
    await hold(store, "m2")
    out = raw_push(bed, bed.app + "/")
    assert out.returncode != 0
    assert "node m2 holds the lease" in out.stderr and "refused" in out.stderr
    assert bed.read("m2", "conf/server.xml") == "<m2/>"
    # Nobody holding the lease, or m1 naming an epoch that is not the lease's: refused too.
    await store.release("rp", "m2", (await store.read("rp")).epoch)
    out = raw_push(bed, bed.app + "/")
    assert out.returncode != 0 and "nobody holds the lease" in out.stderr
    assert "mirror_receive_refused" in out.stderr and "node=m2" in out.stderr  # logged on the receiving node
    epoch = await hold(store, "m1")
    out = raw_push(bed, bed.app + "/", epoch - 1)
    assert out.returncode != 0 and f"held by m1 epoch {epoch}" in out.stderr
    # protect-args would hide the real destination from the check: refused before rsync runs.
    out = raw_push(bed, bed.app + "/", epoch, "--protect-args")
    assert out.returncode != 0 and "protect-args" in out.stderr
    assert bed.read("m2", "conf/server.xml") == "<m2/>"
    # The push naming the holder and its epoch is received: the refusals were the lease, not the set-up.
    out = raw_push(bed, bed.app + "/", epoch)
    assert out.returncode == 0, out.stderr
    assert bed.read("m2", "conf/server.xml") == "<m1 newer/>"


async def test_the_receiver_refuses_a_destination_outside_the_configured_paths(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.put("m1", {"x.txt": "x"})
    await hold(store, "m1")
    out = raw_push(bed, bed.work + "/elsewhere/", await hold_epoch(store))
    assert out.returncode != 0
    assert "outside replication.paths" in out.stderr
    assert "elsewhere" not in bed.listing()
    # Nor may the key run anything but rsync.
    rep = load(bed.config).replication
    shell = bed.fs["m1"].run([*ssh_command(rep), bed.fs["m2"].host.ip, "touch /tmp/fos-should-not-exist"])
    assert shell.returncode != 0 and "only fos mirror may push" in shell.stderr


async def test_a_standby_claiming_the_holders_name_is_refused(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", {"conf/server.xml": "<m1/>"})
    bed.put("m2", {"conf/server.xml": "<m2 stale/>"})
    await hold(store, "m1")
    argv = [*bed.fos_argv_text().split(), "mirror", "--config", bed.config, "--node", "m1"]
    out = bed.fs["m2"].run(argv)  # run on m2, claiming to be m1
    assert out.returncode == 2 and "--node m1 is not this machine" in out.stderr
    assert bed.read("m1", "conf/server.xml") == "<m1/>" and await mirror_events(store) == []


async def test_dry_run_copies_nothing_and_records_no_event(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", INSTALL)
    await hold(store, "m1")
    out = bed.fos("m1", "mirror", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "result=dry_run" in out.stdout
    assert bed.tree("m2") == set()
    assert await mirror_events(store) == []


async def test_a_take_over_reports_how_old_the_copy_is(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", INSTALL)
    await hold(store, "m1", ttl_ms=4000)
    assert bed.fos("m1", "mirror").returncode == 0
    copied = time.monotonic()
    deadline = time.monotonic() + 10
    while not (await store.try_acquire("rp", "m2", 60_000)).acquired:  # m1's lease expires by the DB clock
        assert time.monotonic() < deadline, "m2 could not take over"
        await asyncio.sleep(0.2)
    epoch = (await store.read("rp")).epoch
    cfg = load(bed.config)
    f = await ReplicationSchedule(cfg, store, "m2", lambda: epoch).report_takeover(epoch)
    assert f.age_s is not None and 0 <= f.age_s <= time.monotonic() - copied + 2
    assert [e for e in await store.list_events("rp", limit=5) if e.kind == "replication_stale"] == []
    out = bed.fs["m2"].run([*bed.fos_argv_text().split(), "mirror", "status", "--config", bed.config])
    assert out.returncode == 0 and "m2" in out.stdout and "s old (epoch" in out.stdout
    # Past stale_after the take-over is also an event (the hook for a replication_stale notification).
    bed.write_config(stale_after=0.001)
    f = await ReplicationSchedule(load(bed.config), store, "m2", lambda: epoch).report_takeover(epoch)
    stale = [e for e in await store.list_events("rp", limit=5) if e.kind == "replication_stale"]
    assert len(stale) == 1 and stale[0].node == "m2" and stale[0].epoch == epoch
    assert "copy is" in (stale[0].detail or "") and "stale_after is 0.001s" in (stale[0].detail or "")


SCHEDULE = """
import asyncio, sys, time
from agent.config import load
from agent.replication_schedule import ReplicationSchedule
from lease import SqlLeaseStore

async def main() -> None:
    cfg = load(sys.argv[1])
    epoch = None if sys.argv[2] == "none" else int(sys.argv[2])
    until = time.monotonic() + float(sys.argv[4])  # holding_epoch() is None from then on (a step-down)
    store = SqlLeaseStore(cfg.database.dsn, dialect="sqlite", call_timeout=5)
    schedule = ReplicationSchedule(cfg, store, "m1", lambda: epoch if time.monotonic() < until else None, poll=0.1)
    try:
        await asyncio.wait_for(schedule.run(), float(sys.argv[3]))
    except TimeoutError:
        pass
    await store.close()
    print(schedule.runs)

asyncio.run(main())
"""


def run_schedule(bed: ReplicationBed, epoch: int | None, seconds: float, holding_for: float = 3600) -> int:
    out = bed.fs["m1"].run(
        [sys.executable, "-c", SCHEDULE, bed.config, str(epoch).lower(), str(seconds), str(holding_for)]
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


async def test_the_schedule_copies_every_interval_only_while_this_node_holds_the_lease(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.put("m1", INSTALL)
    epoch = await hold(store, "m1")
    bed.write_config(interval=0)  # on demand only: the schedule never copies
    assert run_schedule(bed, epoch, 2.5) == 0
    assert bed.tree("m2") == set()
    bed.write_config(interval=1)
    assert run_schedule(bed, None, 2.5) == 0  # the agent is not active: nothing
    assert bed.tree("m2") == set()
    assert run_schedule(bed, epoch + 1, 2.5) >= 1  # a tenure the database does not confirm: refused
    assert bed.tree("m2") == set() and await mirror_events(store) == []
    bed.write_config(interval=0.5)
    runs = run_schedule(bed, epoch, 8)  # a run takes about 1.5 s here: at least 2 even on a loaded machine
    assert runs >= 2
    good = [d for d in await mirror_events(store) if "result=ok" in d]
    assert len(good) == runs
    assert bed.tree("m2") == set(INSTALL)


async def test_to_picks_the_peer_and_json_reports_each_run(bed: ReplicationBed, store: SqlLeaseStore) -> None:
    bed.put("m1", INSTALL)
    await hold(store, "m1")
    itself = bed.fos("m1", "mirror", "--to", "m1")
    assert itself.returncode == 2 and "--to m1 is this node" in itself.stderr
    unknown = bed.fos("m1", "mirror", "--to", "m7")
    assert unknown.returncode == 2 and "node 'm7' is not in [[nodes]]" in unknown.stderr
    assert bed.tree("m2") == set()
    out = bed.fos("m1", "mirror", "--to", "m2", "--json")
    assert out.returncode == 0, out.stderr
    [run] = json.loads(out.stdout)
    assert (run["node"], run["result"], run["files"]) == ("m2", "ok", 5)
    status = bed.fs["m2"].run([*bed.fos_argv_text().split(), "mirror", "status", "--json", "--config", bed.config])
    ages = {a["node"]: a for a in json.loads(status.stdout)}
    assert ages["m1"]["age_s"] is None and ages["m2"]["age_s"] is not None and ages["m2"]["epoch"] == 1


def start_mirror(bed: ReplicationBed, node: str) -> subprocess.Popen[str]:
    argv = [*bed.fos_argv_text().split(), "mirror", "--config", bed.config, "--node", node]
    return subprocess.Popen(bed.fs[node].argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_a_run_during_which_the_receiver_takes_the_lease_is_stopped_and_lost_lease(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.put("m1", {".fos-sentinel": ""})
    bed.put_random("m1", {f"big{i}.bin": 1_000_000 for i in range(5)})
    epoch = await hold(store, "m1")
    # m1 sends at 8 Mbit/s (a token bucket on its link): the 5 MB copy takes about 5 s.
    bed.fs["m1"].host.run(
        "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "8mbit", "burst", "32kbit", "latency", "400ms"
    )
    proc = start_mirror(bed, "m1")
    try:
        wait_for(lambda: bed.walk("m2"), 20, 0.05, "the copy to start arriving on m2")
        assert proc.poll() is None, "the copy ended before the lease could change"
        assert await store.release("rp", "m1", epoch)
        assert (await store.try_acquire("rp", "m2", 60_000)).acquired
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out + err
    assert "result=lost_lease" in out and "now m2 epoch" in out
    # The receiver saw its node take the lease and stopped rsync: nothing was renamed into place on m2.
    assert "node m2 holds the lease" in out
    assert not any(p.startswith("big") for p in bed.tree("m2")), bed.tree("m2")
    [event] = [e for e in await store.list_events("rp", limit=10) if e.kind == "mirror"]
    assert "result=lost_lease" in (event.detail or "") and event.epoch == epoch
    status = bed.fs["m2"].run([*bed.fos_argv_text().split(), "mirror", "status", "--json", "--config", bed.config])
    assert {a["node"]: a["age_s"] for a in json.loads(status.stdout)}["m2"] is None  # not a good copy


async def test_the_schedule_stops_a_run_at_once_when_this_node_stops_holding(
    bed: ReplicationBed, store: SqlLeaseStore
) -> None:
    bed.put("m1", {".fos-sentinel": ""})
    bed.put_random("m1", {f"big{i}.bin": 1_000_000 for i in range(5)})
    epoch = await hold(store, "m1")
    bed.write_config(interval=1)
    bed.fs["m1"].host.run(
        "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "8mbit", "burst", "32kbit", "latency", "400ms"
    )
    started = time.monotonic()
    run_schedule(bed, epoch, 12, holding_for=2)  # the run starts at 1 s and would take about 5 s
    assert not any(p.startswith("big") for p in bed.tree("m2")), bed.tree("m2")
    [event] = [e for e in await store.list_events("rp", limit=10) if e.kind == "mirror"]
    assert (event.detail or "").startswith("result=cancelled") and event.epoch == epoch
    assert time.monotonic() - started < 30
