"""The pure rules of replication: the [replication] section, who may send to whom, rsync's command line and
exit statuses, the receiver's allow-list, and the age of a copy. End to end: test_agent_replication_netns.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.config import ConfigError, ReplicationConfig, parse
from agent.replication import (
    MirrorRefused,
    choose_targets,
    deletions_allowed,
    judge_exit,
    parse_detail,
    parse_stats,
    rsync_argv,
    same_lease,
    ssh_command,
)
from agent.replication_receive import ReceiveRefused, refuse_if_holder, server_argv, within
from agent.replication_schedule import Freshness, freshness, is_stale
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
    with_delete = rsync_argv(rep, str(tmp_path), "h", True, False)
    assert "--delete-delay" in with_delete and "--max-delete=100" in with_delete
    without = rsync_argv(rep, str(tmp_path), "h", False, True)
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
    argv = rsync_argv(rep, str(tmp_path), "10.0.0.2", False, False)
    assert argv[-2:] == [f"{tmp_path}/", f"10.0.0.2:{tmp_path}/"]
    assert "--exclude=logs/" in argv and "--exclude=*.pid" in argv
    ssh = ssh_command(rep)
    assert ssh[:5] == ["ssh", "-p", "2200", "-l", "u"]
    assert "/k" in ssh and "UserKnownHostsFile=/kh" in ssh and "BatchMode=yes" in ssh
    file_path = os.path.join(tmp_path, "f.conf")
    open(file_path, "w").close()
    assert rsync_argv(rep, file_path, "h", False, False)[-2:] == [file_path, f"h:{file_path}"]


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
            "rsync --server -logDtpre.iLsfxCIvu . /opt/app/",
            ["rsync", "--server", "-logDtpre.iLsfxCIvu", ".", "/opt/app/"],
        ),
        ("rsync --server -nlogDtpre.iLsfxCIvu --max-delete=5 --delete-delay --stats --delay-updates . /opt/app/", None),
        ("rsync --server -logDtpre.iLsfxCIvu . /etc/app.conf", None),
        ("rsync --server -logDtpre.iLsfxCIvu . /opt/app/sub/dir", None),
        ("rsync --server --sender -logDtpre.iLsfxCIvu . /opt/app/", "--sender"),
        ("rsync --server -logDtpre.iLsfxCIvu . /opt/application/", "outside replication.paths"),
        ("rsync --server -logDtpre.iLsfxCIvu . /opt/app/../../etc", "outside replication.paths"),
        ("rsync --server -logDtpre.iLsfxCIvu . /etc/", "outside replication.paths"),
        ("rsync --server --log-file=/etc/x -logDtpre.iLsfxCIvu . /opt/app/", "'--log-file=/etc/x' is not allowed"),
        ("rsync --server --rsync-path=sh . /opt/app/", "is not allowed"),
        ("rsync --server -logDtpre.iLsfxCIvu . /opt/app/ /etc/", "exactly one destination"),
        ("rsync --server -logDtpre.iLsfxCIvu /opt/app/", "no '.' separator"),
        ("sh -c 'rm -rf /'", "only rsync may run"),
        ("", "only rsync may run"),
        ("rsync --server 'unterminated", "not a valid shell word list"),
    ],
)
def test_the_receiver_runs_only_rsyncs_receiving_side_into_the_configured_paths(command: str, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ReceiveRefused) as err:
            server_argv(command, ALLOWED)
        assert expected in str(err.value)
    else:
        argv = server_argv(command, ALLOWED)
        assert argv == (expected or command.split())


def test_the_receiver_refuses_everything_without_paths_and_while_holding() -> None:
    with pytest.raises(ReceiveRefused, match=r"replication\.paths is empty"):
        server_argv("rsync --server -logDtpre.iLsfxCIvu . /opt/app/", ())
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
