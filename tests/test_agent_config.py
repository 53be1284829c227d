"""Parsing and validating the cluster file: every mistake gets one line that names the field."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from agent.config import ConfigError, expand_env, load, parse, parse_common_ip


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cluster": {"name": "helpdesk", "common_ip": "10.1.2.50/24"},
        "nodes": [{"name": "m1", "interface": "eth0"}, {"name": "m2", "interface": "eth0"}],
        "database": {"dsn": "Driver=SQLite3;Database=/tmp/x.db"},
        "lease": {"ttl": 3, "heartbeat": 1},
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if key:
            data.setdefault(section, {})[key] = value
        else:
            data[section] = value
    return data


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse(base(lease={}))
    assert cfg.lease.ttl == 180 and cfg.lease.heartbeat == 10
    assert cfg.call_timeout == 5
    assert cfg.common_ip == ipaddress.ip_interface("10.1.2.50/24")
    assert cfg.http_listen == "0.0.0.0:8470"
    assert [n.name for n in cfg.nodes] == ["m1", "m2"]


@pytest.mark.parametrize(
    ("text", "mask", "expected"),
    [
        ("192.168.5.10", None, "192.168.5.10/24"),
        ("192.168.5.10", "255.255.0.0", "192.168.5.10/16"),
        ("192.168.5.10/28", None, "192.168.5.10/28"),
        ("fd00::10/64", None, "fd00::10/64"),
    ],
)
def test_common_ip_accepts_prefix_or_dotted_mask_with_default_24(text: str, mask: str | None, expected: str) -> None:
    assert parse_common_ip(text, mask, "cluster.common_ip") == ipaddress.ip_interface(expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster__common_ip": "10.1.2.300"}, r"cluster\.common_ip = '10\.1\.2\.300' is not an address"),
        ({"cluster__common_ip": "10.1.2.0/24"}, r"network address"),
        ({"cluster__common_ip": "127.0.0.5"}, r"cannot be a common IP"),
        ({"cluster__name": "bad name"}, r"cluster\.name = 'bad name' is not a valid name"),
        ({"cluster__colour": "red"}, r"cluster\.colour is not a known setting"),
        ({"nodes": [{"name": "m1", "interface": "eth0"}, {"name": "m1", "interface": "eth1"}]}, r"used twice"),
        ({"nodes": [{"name": "m1"}]}, r"nodes\[0\]\.interface is missing"),
        ({"database": {}}, r"database\.dsn is missing"),
        ({"lease__ttl": "3"}, r"lease\.ttl = '3' has the wrong type"),
        ({"lease__ttl": -1}, r"lease\.ttl = -1 must be greater than 0"),
        ({"application": {"command": "x", "start": "y"}}, r"command and start/stop"),
        ({"application": {"start": "y"}}, r"both start and stop"),
        ({"application": {"health": {"http": "http://x", "tcp": 80}}}, r"more than one of http, tcp, command"),
        ({"application": {"health": {"tcp": 70000}}}, r"not a port"),
        ({"cluster__address_driver": "carrier-pigeon"}, r"address_driver"),
    ],
)
def test_bad_settings_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse(base(**overrides))
    assert "\n" not in str(err.value)


def test_env_references_in_the_dsn_are_expanded() -> None:
    assert expand_env("Pwd=${DBPW};", "database.dsn", {"DBPW": "s3cret"}) == "Pwd=s3cret;"


def test_unset_env_reference_is_an_error_without_leaking_other_values() -> None:
    with pytest.raises(ConfigError, match=r"database\.dsn uses \$\{NOPE\}, which is not set"):
        expand_env("Uid=x;Pwd=${NOPE}", "database.dsn", {})


def test_missing_file_and_bad_toml_are_one_line_errors(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "absent.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(bad))


def test_address_driver_none_needs_no_common_ip_or_interface() -> None:
    cfg = parse(base(cluster={"name": "c", "address_driver": "none"}, nodes=[{"name": "m1"}]))
    assert cfg.common_ip is None and cfg.address_driver == "none"
