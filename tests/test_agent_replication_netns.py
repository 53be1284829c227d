"""fos mirror end to end on the namespace test bed: a real sshd in each node's namespace whose key login runs
`fos mirror receive`, real rsync, and a shared SQLite lease database whose rows the tests write directly."""

from __future__ import annotations

import os
import subprocess
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
    with open(os.path.join(bed.work, "m2", "lib/app.jar")) as f:
        assert f.read() == "x" * 5000
    events = [e for e in await store.list_events("rp", limit=10) if e.kind == "mirror"]
    assert len(events) == 1 and events[0].epoch == epoch and events[0].node == "m1"
    assert "result=ok" in (events[0].detail or "") and "files=3" in (events[0].detail or "")
