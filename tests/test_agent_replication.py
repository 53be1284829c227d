"""The pure rules of replication: the [replication] section, who may send to whom, rsync's command line and
exit statuses, the receiver's allow-list, and the age of a copy. End to end: test_agent_replication_netns.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.cli_ops import read_env_file, receive_env
from agent.config import ConfigError, ReplicationConfig, parse
from agent.node import confirm_node, names_this_machine
from agent.replication import (
    MirrorRefused,
    choose_targets,
    copy_path,
    deletions_allowed,
    judge_exit,
    mirror,
    parse_detail,
    parse_stats,
    rsync_argv,
    same_lease,
    ssh_command,
)
from agent.replication_receive import (
    ReceiveRefused,
    check_push,
    parse_push,
    refuse_if_holder,
    server_argv,
    within,
)
from agent.replication_schedule import Freshness, ReplicationSchedule, deletions_paused, freshness, is_stale
from lease import Event, LeaseState


def config(**replication: Any) -> Any:
    return parse(
        {
            "cluster": {"name": "c", "address_driver": "none"},
            "nodes": [{"name": "m1"}, {"name": "m2", "url": "http://10.0.0.2:8080/"}, {"name": "m3"}],
            "database": {"dsn": "Driver=SQLite3;Database=/tmp/x.db"},
            "lease": {"ttl": 3, "heartbeat": 1},
            "replication": replication,
        }
    )


def test_replication_defaults_are_declared_once_and_off() -> None:
    rep = config().replication
    assert rep == ReplicationConfig()
    assert not rep.enabled and rep.interval == 0 and rep.max_delete == 100 and rep.sentinel == ".fos-sentinel"


def test_replication_keys_are_parsed() -> None:
    rep = config(
        paths=["/opt/app", "/etc/app.conf"],
        excludes=["logs/"],
        interval=60,
        ssh_user="mirror",
        ssh_key="/etc/fos/key",
        ssh_port=2200,
        known_hosts="/etc/fos/known_hosts",
        max_delete=5,
        sentinel=".here",
        stale_after=600,
        timeout=120,
    ).replication
    assert rep.paths == ("/opt/app", "/etc/app.conf") and rep.excludes == ("logs/",) and rep.enabled
    assert (rep.interval, rep.ssh_user, rep.ssh_port, rep.max_delete, rep.stale_after) == (60, "mirror", 2200, 5, 600)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"paths": ["opt/app"]}, "replication.paths[0] = 'opt/app' is not an absolute path"),
        ({"paths": ["/opt/../etc"]}, "is not an absolute path"),
        ({"paths": ["/opt/app", "/opt/app/"]}, "replication.paths lists a path twice"),
        ({"paths": [3]}, "replication.paths[0] = 3 is not a path"),
        ({"paths": "/opt/app"}, "replication.paths = '/opt/app' has the wrong type: expected a list"),
        ({"excludes": [""]}, "replication.excludes[0] = '' is not an rsync pattern"),
        ({"interval": -1}, "replication.interval = -1 must be at least 0"),
        ({"interval": 60}, "replication.interval is set but replication.paths is empty"),
        ({"ssh_port": 0}, "replication.ssh_port = 0 is not a port"),
        ({"ssh_user": "a b"}, "replication.ssh_user = 'a b' is not a user name"),
        ({"ssh_key": "key"}, "replication.ssh_key = 'key' is not an absolute path"),
        ({"max_delete": 1.5}, "replication.max_delete = 1.5 must be a whole number"),
        ({"sentinel": "a/b"}, "replication.sentinel = 'a/b' is not a file name"),
        ({"stale_after": float("inf")}, "replication.stale_after = inf is not a finite number"),
        ({"mirror": 1}, "replication.mirror is not a known setting"),
    ],
)
def test_bad_replication_settings_name_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**keys)
    assert message in str(err.value) and "\n" not in str(err.value)


def lease(holder: str | None, epoch: int = 4, remaining_ms: int | None = 5000) -> LeaseState:
    return LeaseState("c", holder, epoch, remaining_ms)


@pytest.mark.parametrize(
    ("me", "state", "to", "expected"),
    [
        ("m1", lease("m1"), None, ["m2", "m3"]),
        ("m1", lease("m1"), "m3", ["m3"]),
        ("m2", lease("m1"), None, "node m2 does not hold the lease (holder: m1, epoch 4)"),
        ("m1", lease("m1", remaining_ms=-5), None, "node m1 does not hold the lease (holder: nobody"),
        ("m1", lease(None, 0, None), None, "does not hold the lease"),
        ("m1", lease("m1"), "m1", "--to m1 is this node"),
        ("m1", lease("m1"), "m9", "node 'm9' is not in [[nodes]]"),
    ],
)
def test_only_the_holder_sends_and_never_to_itself(me: str, state: LeaseState, to: str | None, expected: Any) -> None:
    cfg = config()
    if isinstance(expected, list):
        assert [n.name for n in choose_targets(cfg, me, state, to)] == expected
    else:
        with pytest.raises((MirrorRefused, ConfigError)) as err:
            choose_targets(cfg, me, state, to)
        assert expected in str(err.value)


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        (lease("m1"), lease("m1"), True),
        (lease("m1"), lease("m1", epoch=5), False),  # lost and re-acquired in between: another tenure
        (lease("m1"), lease("m2", epoch=5), False),
        (lease("m1"), lease("m1", remaining_ms=0), False),  # expired by the database clock
    ],
)
def test_a_run_counts_only_when_the_tenure_held_throughout(before: LeaseState, after: LeaseState, same: bool) -> None:
    assert same_lease(before, after, "m1") is same


@pytest.mark.parametrize(
    ("code", "result"), [(0, "ok"), (24, "ok"), (25, "max_delete"), (23, "failed"), (12, "failed"), (-9, "failed")]
)
def test_rsync_exit_24_files_vanished_is_not_a_failure(code: int, result: str) -> None:
    assert judge_exit(code) == result


def test_deletions_need_the_sentinel_in_the_source_and_a_positive_max_delete(tmp_path: Any) -> None:
    rep = ReplicationConfig(paths=(str(tmp_path),))
    assert not deletions_allowed(rep, str(tmp_path))
    (tmp_path / ".fos-sentinel").write_text("")
    assert deletions_allowed(rep, str(tmp_path))
    assert not deletions_allowed(ReplicationConfig(max_delete=0), str(tmp_path))
    assert not deletions_allowed(ReplicationConfig(sentinel="other"), str(tmp_path))
    with_delete = rsync_argv(rep, str(tmp_path), "h", True, False, is_dir=True, sender="m1", epoch=4)
    assert "--delete-delay" in with_delete and "--max-delete=100" in with_delete
    without = rsync_argv(rep, str(tmp_path), "h", False, True, is_dir=True, sender="m1", epoch=4)
    assert not any(a.startswith("--delete") or a.startswith("--max-delete") for a in without)
    assert "--dry-run" in without and "--delay-updates" in without


def test_the_rsync_command_copies_to_the_same_path_with_the_excludes_and_ssh_settings(tmp_path: Any) -> None:
    rep = ReplicationConfig(
        paths=(str(tmp_path),),
        excludes=("logs/", "*.pid"),
        ssh_user="u",
        ssh_key="/k",
        ssh_port=2200,
        known_hosts="/kh",
    )
    argv = rsync_argv(rep, str(tmp_path), "10.0.0.2", False, False, is_dir=True, sender="m1", epoch=4)
    assert argv[-2:] == [f"{tmp_path}/", f"10.0.0.2:{tmp_path}/"]
    assert "--exclude=logs/" in argv and "--exclude=*.pid" in argv
    ssh = ssh_command(rep)
    assert ssh[:5] == ["ssh", "-p", "2200", "-l", "u"]
    assert "/k" in ssh and "UserKnownHostsFile=/kh" in ssh and "BatchMode=yes" in ssh
    file_path = os.path.join(tmp_path, "f.conf")
    open(file_path, "w").close()
    assert rsync_argv(rep, file_path, "h", False, False, is_dir=False, sender="m1", epoch=4)[-2:] == [
        file_path,
        f"h:{file_path}",
    ]


def test_rsync_stats_and_event_details_are_parsed() -> None:
    out = (
        "Number of deleted files: 3\nNumber of regular files transferred: 1,204\n"
        "Total transferred file size: 9,876,543 bytes\n"
    )
    assert parse_stats(out) == {"files": 1204, "bytes": 9876543, "deleted": 3}
    assert parse_stats("") == {"files": 0, "bytes": 0, "deleted": 0}
    detail = "to=m2 result=ok files=3 bytes=10 deleted=0 duration=1.00s /opt: some text=with equals"
    assert parse_detail(detail) == {
        "to": "m2",
        "result": "ok",
        "files": "3",
        "bytes": "10",
        "deleted": "0",
        "duration": "1.00s",
    }


ALLOWED = ("/opt/app", "/etc/app.conf")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/app/",
            ["rsync", "--server", "-ltpre.iLsfxCIvu", "--delay-updates", ".", "/opt/app/"],
        ),
        ("rsync --server -nltpre.iLsfxCIvu --max-delete=5 --delete-delay --stats --delay-updates . /opt/app/", None),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /etc/app.conf", None),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/app/sub/dir", None),
        ("rsync --server --sender -ltpre.iLsfxCIvu --delay-updates . /opt/app/", "--sender"),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/application/", "outside replication.paths"),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/app/../../etc", "outside replication.paths"),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /etc/", "outside replication.paths"),
        (
            "rsync --server --log-file=/etc/x -ltpre.iLsfxCIvu --delay-updates . /opt/app/",
            "'--log-file=/etc/x' is not allowed",
        ),
        ("rsync --server --rsync-path=sh . /opt/app/", "is not allowed"),
        ("rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/app/ /etc/", "exactly one destination"),
        ("rsync --server -ltpre.iLsfxCIvu /opt/app/", "no '.' separator"),
        ("sh -c 'rm -rf /'", "only rsync may run"),
        ("", "only rsync may run"),
        ("rsync --server 'unterminated", "not a valid shell word list"),
    ],
)
def test_the_receiver_runs_only_rsyncs_receiving_side_into_the_configured_paths(command: str, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ReceiveRefused) as err:
            server_argv(command, ALLOWED, 100)
        assert expected in str(err.value)
    else:
        argv = server_argv(command, ALLOWED, 100)
        assert argv == (expected or command.split())


def test_the_receiver_refuses_everything_without_paths_and_while_holding() -> None:
    with pytest.raises(ReceiveRefused, match=r"replication\.paths is empty"):
        server_argv("rsync --server -ltpre.iLsfxCIvu --delay-updates . /opt/app/", (), 100)
    with pytest.raises(ReceiveRefused, match="node m2 holds the lease"):
        refuse_if_holder(lease("m2"), "m2")
    refuse_if_holder(lease("m1"), "m2")
    refuse_if_holder(lease("m2", remaining_ms=-1), "m2")  # expired: m2 is not active any more


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/opt/app", True),
        ("/opt/app/", True),
        ("/opt/app/x", True),
        ("/opt/./app/x", True),
        ("/opt/apps", False),
        ("/opt", False),
        ("opt/app", False),
        ("/opt/app/../x", False),
        ("/etc/app.conf", True),
    ],
)
def test_within_compares_whole_path_components(path: str, inside: bool) -> None:
    assert within(path, ALLOWED) is inside


@pytest.mark.parametrize(
    ("age", "stale_after", "stale"),
    [(None, 60, True), (10, 60, False), (61, 60, True), (None, 0, False), (10**6, 0, False)],
)
def test_a_copy_is_stale_past_stale_after_or_when_never_made(
    age: float | None, stale_after: float, stale: bool
) -> None:
    assert is_stale(Freshness("m2", None, None, age), stale_after) is stale


class Events:
    def __init__(self, events: list[Event]) -> None:
        self.events = events

    async def list_events(
        self, cluster: str, *, limit: int = 20, since_id: int = 0, timeout: float | None = None
    ) -> list[Event]:
        return self.events[:limit]


async def test_the_age_is_from_the_newest_good_copy_to_that_node() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def ev(i: int, minutes: int, detail: str, kind: str = "mirror") -> Event:
        return Event(i, "c", now - timedelta(minutes=minutes), "m1", kind, i, detail)

    store = Events(
        [
            ev(5, 1, "to=m2 result=failed files=0"),
            ev(4, 2, "to=m3 result=ok files=1"),
            ev(3, 3, "to=m2 result=ok files=1", kind="note"),
            ev(2, 5, "to=m2 result=ok files=9"),
            ev(1, 9, "to=m2 result=ok files=1"),
        ]
    )
    f = await freshness(store, "c", "m2", now=now)  # type: ignore[arg-type]
    assert (f.age_s, f.epoch) == (300.0, 2)
    assert "300s old" in f.describe()
    never = await freshness(store, "c", "m9", now=now)  # type: ignore[arg-type]
    assert never.age_s is None and "no good copy" in never.describe()


# --- security review 3 -------------------------------------------------------------------------------------

SERVER = "rsync --server -ltpre.iLsfxCIvu --delay-updates"


@pytest.mark.parametrize(
    "options",
    [
        "-sltpre.iLsfxCIvu",  # protect-args first in the bundle (review3/probe.py)
        "-ltspre.iLsfxCIvu",
        "-se.iLsfxCIvu",
        "--protect-args",
        "--secluded-args",
    ],
)
def test_the_receiver_refuses_protect_args_in_any_form(options: str) -> None:
    with pytest.raises(ReceiveRefused, match="protect-args"):
        server_argv(f"{SERVER} {options} . /opt/app/", ALLOWED, 100)
    with pytest.raises(ReceiveRefused, match="protect-args"):  # what rsync really sends: no '.', no destination
        server_argv(f"rsync --server {options}", ALLOWED, 100)


def test_capability_letters_after_e_are_not_options() -> None:
    assert server_argv(f"{SERVER} . /opt/app/", ALLOWED, 100)[2] == "-ltpre.iLsfxCIvu"  # the `s` after `e`


@pytest.mark.parametrize("bundle", ["-Dltpre.iLsfxC", "-oltpre.iLsfxC", "-gltpre.iLsfxC", "-Kltpr", "-Lltpr", "-kltpr"])
def test_the_receiver_refuses_devices_owners_and_symlink_following(bundle: str) -> None:
    with pytest.raises(ReceiveRefused, match="is not allowed"):
        server_argv(f"rsync --server {bundle} --delay-updates . /opt/app/", ALLOWED, 100)


def test_the_receiver_resolves_symlinks_before_comparing_with_the_paths(tmp_path: Any) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    (tmp_path / "alias").symlink_to(allowed)
    roots = (str(allowed),)
    for dest in (f"{allowed}/link/", f"{allowed}/link/new/dir", f"{allowed}/link"):
        with pytest.raises(ReceiveRefused, match=r"outside replication\.paths"):
            server_argv(f"{SERVER} . {dest}", roots, 100)
    assert server_argv(f"{SERVER} . {allowed}/new/", roots, 100)[-1] == f"{allowed}/new/"
    # an allowed root that is itself reached through a symlink still matches
    assert within(f"{tmp_path}/alias/x", roots) and within(f"{allowed}/x", (str(tmp_path / "alias"),))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("--delete-delay --max-delete=5", None),
        ("--delete-delay --max-delete=100", None),
        ("--delete --max-delete=0", None),
        ("--delete-delay", "deletions need --max-delete=N with N <= this node's replication.max_delete (100)"),
        ("--delete-during --max-delete=101", "--max-delete=101 is above this node's replication.max_delete (100)"),
        ("--delete --max-delete=99999999", "above this node's replication.max_delete"),
        ("--timeout=\u0663", "is not allowed"),  # Arabic-Indic digit: \d would accept it
        ("--max-delete=\uff15", "is not allowed"),
    ],
)
def test_the_receiver_bounds_deletions_by_its_own_max_delete(options: str, expected: str | None) -> None:
    command = f"{SERVER} {options} . /opt/app/"
    if expected is None:
        assert server_argv(command, ALLOWED, 100)[-1] == "/opt/app/"
    else:
        with pytest.raises(ReceiveRefused) as err:
            server_argv(command, ALLOWED, 100)
        assert expected in str(err.value)


def test_the_receiver_requires_delay_updates() -> None:
    with pytest.raises(ReceiveRefused, match="--delay-updates is required"):
        server_argv("rsync --server -ltpre.iLsfxCIvu . /opt/app/", ALLOWED, 100)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (f"fos-mirror-push m1 7 {SERVER} . /opt/app/", ("m1", 7)),
        (f"{SERVER} . /opt/app/", "only fos mirror may push"),
        (f"fos-mirror-push m1 7x {SERVER} . /opt/app/", "names no valid node and epoch"),
        (f"fos-mirror-push m1 -1 {SERVER} . /opt/app/", "names no valid node and epoch"),
        (f"fos-mirror-push 'm1;id' 7 {SERVER} . /opt/app/", "names no valid node and epoch"),
        ("fos-mirror-push m1 \u0667 " + SERVER + " . /opt/app/", "names no valid node and epoch"),
        ("fos-mirror-push m1 7 sh -c id", "only rsync may run"),
        ("fos-mirror-push m1", "only fos mirror may push"),
    ],
)
def test_a_push_names_its_sender_and_epoch_and_is_parsed_strictly(command: str, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ReceiveRefused) as err:
            parse_push(command, ALLOWED, 100)
        assert expected in str(err.value)
    else:
        push = parse_push(command, ALLOWED, 100)
        assert (push.sender, push.epoch, push.argv[:2]) == (*expected, ["rsync", "--server"])


@pytest.mark.parametrize(
    ("state", "sender", "epoch", "expected"),
    [
        (lease("m1", epoch=7), "m1", 7, None),
        (lease("m2", epoch=7), "m2", 7, "node m2 holds the lease"),
        (lease(None, 0, None), "m1", 7, "nobody holds the lease"),
        (lease("m1", epoch=7, remaining_ms=-1), "m1", 7, "nobody holds the lease"),
        (lease("m1", epoch=8), "m1", 7, "held by m1 epoch 8"),
        (lease("m3", epoch=7), "m1", 7, "held by m3 epoch 7"),
    ],
)
def test_the_receiver_accepts_only_the_current_holder_in_its_epoch(
    state: LeaseState, sender: str, epoch: int, expected: str | None
) -> None:
    if expected is None:
        check_push(state, "m2", sender, epoch)
    else:
        with pytest.raises(ReceiveRefused, match=expected):
            check_push(state, "m2", sender, epoch)


def test_the_sender_names_itself_and_its_epoch_and_never_sends_owners_or_devices(tmp_path: Any) -> None:
    rep = ReplicationConfig(paths=(str(tmp_path),))
    argv = rsync_argv(rep, str(tmp_path), "h", True, False, is_dir=True, sender="m1", epoch=9)
    assert "--rsync-path=fos-mirror-push m1 9 rsync" in argv and "-rlpt" in argv and "-a" not in argv
    # what the receiver will see must pass its own checks (the server command rsync builds from this argv)
    push = parse_push(
        f"fos-mirror-push m1 9 {SERVER} --delete-delay --max-delete=100 . {tmp_path}/", (str(tmp_path),), 100
    )
    assert push.epoch == 9


def test_ipv6_peer_hosts_are_bracketed_in_the_destination(tmp_path: Any) -> None:
    rep = ReplicationConfig(paths=(str(tmp_path),))
    argv = rsync_argv(rep, str(tmp_path), "fd00::2", False, False, is_dir=True, sender="m1", epoch=1)
    assert argv[-1] == f"[fd00::2]:{tmp_path}/"


@pytest.mark.parametrize("key", ["ssh_key", "known_hosts"])
@pytest.mark.parametrize(
    "value", ['/tmp/k" -oProxyCommand=touch${IFS}/tmp/pwn "x', "/tmp/it's/key", "/a b", "/a\\b", "/a\tb"]
)
def test_ssh_key_and_known_hosts_refuse_what_could_inject_ssh_options(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(paths=["/opt/app"], **{key: value})
    assert f"replication.{key}" in str(err.value) and "\n" not in str(err.value)


async def test_a_hung_source_stat_fails_the_run_without_blocking_the_loop(monkeypatch: Any, tmp_path: Any) -> None:
    release = threading.Event()
    real_isdir = os.path.isdir

    def hung_isdir(path: Any) -> bool:
        if str(path) == "/mnt/hung":
            release.wait(30)
        return real_isdir(path)

    monkeypatch.setattr(os.path, "isdir", hung_isdir)
    rep = ReplicationConfig(paths=("/mnt/hung",))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        run = await copy_path(rep, "/mnt/hung", "h", False, "m1", 1, stat_timeout=0.3)
    finally:
        release.set()
        tick_task.cancel()
    assert run.returncode == -1 and "did not answer stat()" in run.error and judge_exit(run.returncode) == "failed"
    assert ticks >= 10  # the event loop kept running while the stat hung


def mirror_event(detail: str, epoch: int = 4) -> Event:
    return Event(1, "c", datetime(2026, 1, 1, tzinfo=UTC), "m1", "mirror", epoch, detail)


@pytest.mark.parametrize(
    ("details", "paused"),
    [
        ([], False),
        (["to=m2 result=ok files=1"], False),
        (["to=m2 result=max_delete files=1"], True),
        (["to=m2 result=ok files=1 deletes=paused", "to=m2 result=max_delete"], True),
        (["to=m2 result=ok files=1 by=operator", "to=m2 result=ok deletes=paused", "to=m2 result=max_delete"], False),
        (["to=m2 result=max_delete by=operator"], True),
        (["to=m3 result=ok by=operator", "to=m2 result=max_delete"], True),
        (["to=m2 result=dry_run by=operator", "to=m2 result=max_delete"], True),
    ],
)
def test_deletions_pause_for_a_peer_after_max_delete_until_a_run_by_hand(details: list[str], paused: bool) -> None:
    assert deletions_paused([mirror_event(d) for d in details], "m2") is paused


class FakeMirrorStore:
    """The lease read and event record of mirror(): a fixed holder, events kept in a list."""

    def __init__(self, state: LeaseState) -> None:
        self.state, self.events = state, []  # type: ignore[var-annotated]

    async def read(self, cluster: str, *, timeout: float | None = None) -> LeaseState:
        return self.state

    async def record_event(
        self,
        cluster: str,
        node: str | None,
        kind: str,
        epoch: int | None,
        detail: str | None,
        *,
        timeout: float | None = None,
    ) -> None:
        self.events.append(detail)


async def test_a_paused_peer_gets_no_delete_options_and_the_event_says_so(monkeypatch: Any, tmp_path: Any) -> None:
    (tmp_path / ".fos-sentinel").write_text("")
    seen: list[list[str]] = []

    async def fake_run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        seen.append(argv)
        return 0, "", ""

    monkeypatch.setattr("agent.replication.run_command", fake_run)
    cfg = config(paths=[str(tmp_path)])
    store = FakeMirrorStore(lease("m1"))
    await mirror(cfg, store, "m1", to="m2", paused=frozenset({"m2"}), is_local=lambda h: False)
    assert not any(a.startswith(("--delete", "--max-delete")) for a in seen[0])
    assert parse_detail(store.events[0])["deletes"] == "paused" and "run fos mirror by hand" in store.events[0]
    await mirror(cfg, store, "m1", to="m2", by_operator=True, is_local=lambda h: False)
    assert "--delete-delay" in seen[1] and parse_detail(store.events[1])["by"] == "operator"


async def test_a_target_that_resolves_to_this_machine_is_dropped(monkeypatch: Any, tmp_path: Any) -> None:
    async def fake_run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        return 0, "", ""

    monkeypatch.setattr("agent.replication.run_command", fake_run)
    cfg = config(paths=[str(tmp_path)])
    store = FakeMirrorStore(lease("m1"))
    results = await mirror(cfg, store, "m1", is_local=lambda h: h == "10.0.0.2")
    assert [r.node for r in results] == ["m3"]
    with pytest.raises(MirrorRefused, match="is this machine"):
        await mirror(cfg, store, "m1", to="m2", is_local=lambda h: h == "10.0.0.2")


@pytest.mark.parametrize(
    ("name", "hostname", "addresses", "ok"),
    [
        ("m1", "m1.example", set(), True),
        ("m2", "box", {"10.0.0.2"}, True),  # m2's url names a local address
        ("m2", "box", {"10.0.0.9"}, False),  # a standby claiming to be m2
        ("m1", "m2", {"10.0.0.2"}, False),  # m1 has no url and is not the hostname
    ],
)
def test_mirror_trusts_node_only_when_it_names_this_machine(
    name: str, hostname: str, addresses: set[str], ok: bool
) -> None:
    cfg = config()
    if ok:
        assert confirm_node(cfg, name, hostname, addresses, lambda h: {h}).name == name
    else:
        with pytest.raises(ConfigError, match=f"--node {name} is not this machine"):
            confirm_node(cfg, name, hostname, addresses, lambda h: {h})


def test_names_this_machine_counts_loopback_and_local_addresses() -> None:
    assert names_this_machine("localhost", set(), lambda h: {"127.0.0.1"})
    assert names_this_machine("m2", {"10.0.0.2"}, lambda h: {"10.0.0.2"})
    assert not names_this_machine("m2", {"10.0.0.1"}, lambda h: {"10.0.0.2"})
    assert not names_this_machine("nowhere", {"10.0.0.1"}, lambda h: set())


def test_the_env_file_is_read_without_shell_evaluation(tmp_path: Any) -> None:
    path = tmp_path / "fos.env"
    path.write_text("# comment\n\nFOS_DB_PASSWORD='s3 cr$t'\nOTHER=$(id)\nQ=\"x\"\n")
    assert read_env_file(str(path)) == {"FOS_DB_PASSWORD": "s3 cr$t", "OTHER": "$(id)", "Q": "x"}
    path.write_text("export FOS_DB_PASSWORD=hunter2\n")
    with pytest.raises(ConfigError) as err:
        read_env_file(str(path))
    assert "line 1 is not KEY=VALUE" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_env_file(str(tmp_path / "missing"))


def test_receive_with_env_file_expands_the_dsn_and_the_probe_reads_the_lease(tmp_path: Any) -> None:
    db = tmp_path / "lease.db"
    conf = tmp_path / "fos.toml"
    conf.write_text(
        '[cluster]\nname = "c1"\naddress_driver = "none"\n'
        '[database]\ndsn = "Driver=SQLite3;Database=${FOS_TEST_DB}"\n'
        '[[nodes]]\nname = "m1"\n[[nodes]]\nname = "m2"\n'
        f'[replication]\npaths = ["{tmp_path}"]\n'
    )
    env_file = tmp_path / "fos.env"
    env_file.write_text(f"FOS_TEST_DB={db}\n")
    env = {k: v for k, v in os.environ.items() if k != "FOS_TEST_DB"}
    fos = [sys.executable, "-m", "agent.cli", "mirror", "receive", "--config", str(conf), "--node", "m2"]
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "init-db", "--config", str(conf)],
        env={**env, "FOS_TEST_DB": str(db)},
        capture_output=True,
        timeout=60,
    )
    env["SSH_ORIGINAL_COMMAND"] = "fos-mirror-probe"
    without = subprocess.run(fos, env=env, capture_output=True, text=True, timeout=60)
    assert without.returncode == 2 and "FOS_TEST_DB" in without.stderr
    probe = subprocess.run([*fos, "--env-file", str(env_file)], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "node m2 ready" in probe.stdout and "lease read: holder nobody" in probe.stdout


class FakeScheduleStore(FakeMirrorStore):
    """FakeMirrorStore with the event history the schedule reads."""

    def __init__(self, state: LeaseState, history: list[Event]) -> None:
        super().__init__(state)
        self.history = history

    async def list_events(self, cluster: str, limit: int = 50, *, timeout: float | None = None) -> list[Event]:
        return self.history[:limit]


async def test_the_schedule_copies_without_deletions_to_a_peer_whose_last_run_hit_max_delete(
    monkeypatch: Any, tmp_path: Any
) -> None:
    (tmp_path / ".fos-sentinel").write_text("")
    seen: dict[str, list[str]] = {}

    async def fake_run(argv: list[str], timeout: float) -> tuple[int, str, str]:
        seen[argv[-1].split(":")[0]] = argv
        return 0, "", ""

    monkeypatch.setattr("agent.replication.run_command", fake_run)
    monkeypatch.setattr("agent.node.names_this_machine", lambda host: False)
    cfg = config(paths=[str(tmp_path)])
    store = FakeScheduleStore(lease("m1"), [mirror_event("to=m2 result=max_delete files=0")])
    schedule = ReplicationSchedule(cfg, store, "m1", lambda: 4, poll=0.05)  # type: ignore[arg-type]
    await schedule._run_while_holding(4)
    assert not any(a.startswith("--delete") for a in seen["10.0.0.2"])  # m2: paused
    assert "--delete-delay" in seen["m3"]  # m3: deletes as usual
    assert "deletes=paused" in store.events[0] and "to=m2" in store.events[0]


def test_the_receiver_reads_the_default_env_file_only_when_it_exists(monkeypatch: Any, tmp_path: Any) -> None:
    default = tmp_path / "fos.env"
    monkeypatch.setattr("agent.cli_ops.DEFAULT_ENV_FILE", str(default))
    monkeypatch.delenv("FOS_DB_PASSWORD", raising=False)
    assert "FOS_DB_PASSWORD" not in receive_env(None)  # no default file: the process environment only
    default.write_text("FOS_DB_PASSWORD=from-default\n")
    assert receive_env(None)["FOS_DB_PASSWORD"] == "from-default"
    other = tmp_path / "other.env"
    other.write_text("FOS_DB_PASSWORD=from-flag\n")
    assert receive_env(str(other))["FOS_DB_PASSWORD"] == "from-flag"  # --env-file wins over the default
