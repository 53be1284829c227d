"""Parsing and validating the cluster file: every mistake gets one line that names the field."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    AnnounceConfig,
    AppConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    HealthConfig,
    LeaseConfig,
    NodeConfig,
    check_listen,
    expand_env,
    load,
    parse,
    parse_common_ip,
    redact_url,
)
from lease import quote_odbc_value
from tests.test_agent_config_notify import NOTIFY_EFFECTS


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


# ---- bad input: non-finite numbers, fractions for counts, bytes, huge values, secrets (issue 9 item 14) ----------

FLOAT_KEYS = [
    "cluster__probe_timeout",
    "database__call_timeout",
    "lease__ttl",
    "lease__heartbeat",
    "lease__fence_margin",
    "lease__min_hold",
    "application__stop_timeout",
    "application__hold_off",
    "announce__interval",
    "announce__refresh",
]
HEALTH_FLOAT_KEYS = ["interval", "timeout", "start_grace"]


def dotted(key: str) -> str:
    return key.replace("__", ".")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_seconds_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(dotted(key))} = -?(nan|inf) is not a finite number") as err:
        parse(base(**{key: value}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", HEALTH_FLOAT_KEYS)
def test_non_finite_health_timing_is_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^application\.health\.{key} = -?(nan|inf) is not a finite number"):
        parse(base(application={"health": {key: value}}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2.5, 3.0])
@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda v: {"application": {"health": {"failures": v}}}, r"^application\.health\.failures = "),
        (lambda v: {"application": {"health": {"tcp": v}}}, r"^application\.health\.tcp = "),
        (lambda v: {"announce": {"count": v}}, r"^announce\.count = "),
        (lambda v: {"nodes": [{"name": "m1", "interface": "eth0", "priority": v}]}, r"^nodes\[0\]\.priority = "),
    ],
)
def test_integer_keys_refuse_fractions_and_non_finite_values(where: Any, message: str, value: float) -> None:
    with pytest.raises(ConfigError, match=message + r".* must be a whole number"):
        parse(base(**where(value)))


def test_a_ttl_beyond_the_databases_32_bit_milliseconds_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^lease\.ttl = 3000000 is more than 86400"):
        parse(base(lease__ttl=3_000_000))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lease__heartbeat": 1e300}, r"^lease\.heartbeat = 1e\+300 is more than"),
        ({"application__stop_timeout": 10**30}, r"^application\.stop_timeout = a 31-digit number is more than"),
        ({"announce__count": 10**6}, r"^announce\.count = 1000000 is more than"),
        ({"cluster__probe_timeout": 3600}, r"^cluster\.probe_timeout = 3600 is more than"),
        ({"application": {"health": {"failures": 2**63}}}, r"^application\.health\.failures = .* is more than"),
    ],
)
def test_huge_values_are_refused_with_the_upper_bound(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(base(**overrides))


def test_a_non_utf8_file_is_a_one_line_error(tmp_path: Any) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[cluster]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*: save it as UTF-8") as err:
        load(str(path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "secret"),
    [
        ({"database__dsn": ["Driver=x;Pwd=Hush-1"]}, "Hush-1"),
        ({"database__dsn": {"pwd": "Hush-2"}}, "Hush-2"),
        ({"database__dsn": 12345678}, "12345678"),
    ],
)
def test_a_dsn_of_the_wrong_type_is_never_echoed(overrides: dict[str, Any], secret: str) -> None:
    with pytest.raises(ConfigError, match=r"^database\.dsn has the wrong type \((list|table|number)\)") as err:
        parse(base(**overrides))
    assert secret not in str(err.value)


def test_an_unknown_key_with_a_newline_in_its_name_is_shown_on_one_line() -> None:
    with pytest.raises(ConfigError, match="is not a known setting") as err:
        parse(base(cluster={"name": "c", "common_ip": "10.1.2.50/24", "bad\nkey": 1}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:8470", "0.0.0.0", 8470),
        ("[::1]:9000", "::1", 9000),
        ("localhost:1", "localhost", 1),
        (":8470", "", 8470),
    ],
)
def test_http_listen_accepts_host_port_forms(listen: str, host: str, port: int) -> None:
    cfg = parse(base(http={"listen": listen}))
    assert cfg.http_listen == listen and cfg.http_address == (host, port)


@pytest.mark.parametrize(
    "listen", ["localhost", "8470", "host:0", "host:65536", "host:http", "::1:80", "[zz]:80", "a b:80", "[::1]80"]
)
def test_http_listen_is_validated_when_parsed(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^http\.listen = .* use host:port"):
        parse(base(http={"listen": listen}))


def test_an_empty_http_listen_turns_the_endpoint_off() -> None:
    cfg = parse(base(http={"listen": ""}))
    assert cfg.http_listen is None and cfg.http_address is None


def test_http_listen_names_are_resolved_by_check_listen() -> None:
    check_listen(parse(base(http={"listen": "localhost:8470"})))
    check_listen(parse(base(http={"listen": "127.0.0.1:8470"})))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@127.0.0.1:8080/health", "http://***@127.0.0.1:8080/health"),
        ("https://token@host/x?a=1", "https://***@host/x?a=1"),
        ("http://host/x?token=abc&a=1", "http://host/x?token=***&a=1"),
        ("http://127.0.0.1:8080/health", "http://127.0.0.1:8080/health"),
        ("http://u:p@[::1", "http://***@[::1"),
    ],
)
def test_redact_url_hides_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_health_url_with_credentials_is_accepted_but_never_shown_in_errors() -> None:
    cfg = parse(base(application={"health": {"http": "http://u:Hush-3@127.0.0.1:8080/h"}}))
    assert cfg.app.health.http == "http://u:Hush-3@127.0.0.1:8080/h"
    with pytest.raises(ConfigError) as err:
        parse(base(application={"health": {"http": "ftp://u:Hush-3@127.0.0.1/h"}}))
    assert "Hush-3" not in str(err.value) and "application.health.http" in str(err.value)


@pytest.mark.parametrize("key", ["cluster__alias_url"])
def test_urls_shown_in_status_must_not_carry_credentials(key: str) -> None:
    with pytest.raises(ConfigError, match=r"user name or password") as err:
        parse(base(**{key: "http://admin:Hush-4@helpdesk.example.com/"}))
    assert "Hush-4" not in str(err.value)
    with pytest.raises(ConfigError, match=r"user name or password") as err:
        parse(base(nodes=[{"name": "m1", "interface": "eth0", "url": "http://a:Hush-5@m1/"}]))
    assert "Hush-5" not in str(err.value)


# ---- ${ENV} in the DSN: ODBC quoting and `fos config check` without the secrets -----------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("a;b", "{a;b}"),
        ("br}ace", "{br}}ace}"),
        ("{x", "{{x}"),
        (" lead", "{ lead}"),
        ("trail ", "{trail }"),
        ("", ""),
    ],
)
def test_env_values_are_quoted_by_odbc_rules(value: str, quoted: str) -> None:
    assert quote_odbc_value(value) == quoted


@pytest.mark.parametrize(
    ("template", "password", "dsn"),
    [
        ("Uid=fos;Pwd=${PW};Server=db", "a;b}c", "Uid=fos;Pwd={a;b}}c};Server=db"),
        ("Uid=fos;Pwd=${PW}", " x ", "Uid=fos;Pwd={ x }"),
        ("Uid=fos;Pwd={${PW}};Server=db", "a;b}c", "Uid=fos;Pwd={a;b}}c};Server=db"),
        ("Uid=fos;Pwd=${PW};", "simple", "Uid=fos;Pwd=simple;"),
        ("Server=${PW}.example.com;Uid=x", "db;1", "Server={db;1.example.com};Uid=x"),
    ],
)
def test_env_values_substituted_into_the_dsn_are_odbc_quoted(template: str, password: str, dsn: str) -> None:
    cfg = parse(base(database={"dsn": template}), env={"PW": password})
    assert cfg.database.dsn == dsn


def test_env_can_be_deferred_for_config_check() -> None:
    cfg = parse(base(database={"dsn": "Uid=fos;Pwd=${NOT_SET_HERE}"}), env={}, defer_env=True)
    assert cfg.unset_env == ("NOT_SET_HERE",)
    assert "NOT_SET_HERE" not in cfg.database.dsn or cfg.database.dsn.startswith("Uid=fos;Pwd=")
    with pytest.raises(ConfigError, match=r"NOT_SET_HERE.*not set"):
        parse(base(database={"dsn": "Uid=fos;Pwd=${NOT_SET_HERE}"}), env={})


# ---- new keys and defaults declared once ----------------------------------------------------------------------


def test_defaults_come_from_the_dataclasses() -> None:
    cfg = parse(base(lease={}))
    assert cfg.lease == LeaseConfig()
    assert cfg.app == AppConfig()
    assert cfg.app.health == HealthConfig()
    assert cfg.announce == AnnounceConfig()
    assert cfg.database == DatabaseConfig(dsn=cfg.database.dsn)
    assert cfg.nodes[0] == NodeConfig(name="m1", interface="eth0")
    assert cfg.probe_timeout == fields_default(Config, "probe_timeout")
    assert cfg.probe_conflict == fields_default(Config, "probe_conflict")
    assert cfg.http_listen == fields_default(Config, "http_listen")
    assert cfg.wake_port == fields_default(Config, "wake_port") == 8470  # the HTTP port's number, as UDP


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, r"^cluster\.wake_port = -1 is not a port: use 1-65535, or 0 to turn hints off$"),
        (65536, r"^cluster\.wake_port = 65536 is not a port: use 1-65535, or 0 to turn hints off$"),
        (8470.5, r"^cluster\.wake_port = 8470\.5 must be a whole number"),
        ("8470", r"^cluster\.wake_port = '8470' has the wrong type: expected"),
        (True, r"^cluster\.wake_port = True has the wrong type: expected"),
    ],
)
def test_a_wake_port_that_is_no_port_is_refused_in_one_line(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse(base(cluster__wake_port=value))
    assert "\n" not in str(err.value)


def test_any_port_and_zero_are_accepted_as_the_wake_port() -> None:
    assert [parse(base(cluster__wake_port=p)).wake_port for p in (0, 1, 8471, 65535)] == [0, 1, 8471, 65535]


def fields_default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@pytest.mark.parametrize("schema", ["dbo", "fos_1", "_x", "Ops"])
def test_database_schema_accepts_sql_identifiers(schema: str) -> None:
    assert parse(base(database__schema=schema)).database.schema == schema


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", "a.b", 'x"; drop', "a" * 64])
def test_database_schema_refuses_anything_but_an_identifier(schema: str) -> None:
    with pytest.raises(ConfigError, match=r"^database\.schema = .* is not an SQL identifier"):
        parse(base(database__schema=schema))


def test_database_schema_defaults_to_the_dialects_own() -> None:
    assert parse(base()).database.schema is None


def test_application_user_and_group_are_parsed() -> None:
    cfg = parse(base(application={"command": "x", "user": "helpdesk", "group": "helpdesk"}))
    assert (cfg.app.user, cfg.app.group) == ("helpdesk", "helpdesk")
    assert parse(base()).app.user is None and parse(base()).app.group is None


@pytest.mark.parametrize("key", ["user", "group"])
@pytest.mark.parametrize("value", ["", "a b", "x:y", 5])
def test_application_user_and_group_refuse_non_names(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^application\.{key} "):
        parse(base(application={"command": "x", key: value}))


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mariadb", "sqlite", "mssql"])
def test_database_dialect_accepts_known_names(dialect: str) -> None:
    assert parse(base(database__dialect=dialect)).database.dialect == dialect


def test_database_dialect_refuses_unknown_names_at_parse_time() -> None:
    with pytest.raises(ConfigError, match=r"^database\.dialect = 'oracle' is unknown"):
        parse(base(database__dialect="oracle"))


# ---- every documented key reaches the Config (issue 9 item 5; the runtime effects are tested where they act) ---

ROOT = Path(__file__).resolve().parent.parent
NODES = [{"name": "m1", "interface": "eth0"}, {"name": "m2", "interface": "eth0"}]


# key -> (overrides of base(), what to read from the Config, the value it must then have)
def _rep(key: str) -> Callable[[Config], Any]:
    return lambda c: getattr(c.replication, key)


EFFECTS: dict[str, tuple[dict[str, Any], Any, Any]] = {
    "cluster.name": ({"cluster__name": "other"}, lambda c: c.cluster, "other"),
    "cluster.common_ip": ({"cluster__common_ip": "10.1.2.60/25"}, lambda c: str(c.common_ip), "10.1.2.60/25"),
    "cluster.netmask": (
        {"cluster": {"name": "c", "common_ip": "10.1.2.60", "netmask": "255.255.0.0"}},
        lambda c: str(c.common_ip),
        "10.1.2.60/16",
    ),
    "cluster.alias_url": ({"cluster__alias_url": "http://hd.example/"}, lambda c: c.alias_url, "http://hd.example/"),
    "cluster.address_driver": ({"cluster__address_driver": "none"}, lambda c: c.address_driver, "none"),
    "cluster.probe_conflict": ({"cluster__probe_conflict": False}, lambda c: c.probe_conflict, False),
    "cluster.probe_timeout": ({"cluster__probe_timeout": 0.7}, lambda c: c.probe_timeout, 0.7),
    "cluster.wake_port": ({"cluster__wake_port": 0}, lambda c: c.wake_port, 0),
    "cluster.failback": ({"cluster__failback": "auto"}, lambda c: c.policy.failback, "auto"),
    "cluster.failback_delay": ({"cluster__failback_delay": 60}, lambda c: c.policy.failback_delay, 60.0),
    "maintenance.remind_after": ({"maintenance__remind_after": 600}, lambda c: c.policy.remind_after, 600.0),
    "flap.max_takeovers": ({"flap__max_takeovers": 5}, lambda c: c.policy.max_takeovers, 5),
    "flap.window": ({"flap__window": 600}, lambda c: c.policy.flap_window, 600.0),
    "nodes.name": ({"nodes": [{"name": "x9", "interface": "eth0"}]}, lambda c: c.nodes[0].name, "x9"),
    "nodes.interface": ({"nodes": [{"name": "m1", "interface": "br1"}]}, lambda c: c.nodes[0].interface, "br1"),
    "nodes.url": (
        {"nodes": [{"name": "m1", "interface": "eth0", "url": "http://m1:8080/"}]},
        lambda c: c.nodes[0].url,
        "http://m1:8080/",
    ),
    "nodes.priority": (
        {"nodes": [{"name": "m1", "interface": "eth0", "priority": 100}]},
        lambda c: c.nodes[0].priority,
        100,
    ),
    "database.dsn": (
        {"database__dsn": "Driver=SQLite3;Database=/y.db"},
        lambda c: c.database.dsn,
        "Driver=SQLite3;Database=/y.db",
    ),
    "database.dialect": ({"database__dialect": "mssql"}, lambda c: c.database.dialect, "mssql"),
    "database.schema": ({"database__schema": "fos"}, lambda c: c.database.schema, "fos"),
    "database.call_timeout": ({"database__call_timeout": 0.25}, lambda c: c.call_timeout, 0.25),
    "lease.ttl": ({"lease__ttl": 4}, lambda c: c.lease.ttl, 4.0),
    "lease.heartbeat": ({"lease__heartbeat": 0.75}, lambda c: c.lease.heartbeat, 0.75),
    "lease.fence_margin": ({"lease__fence_margin": 0.3}, lambda c: c.lease.fence_margin, 0.3),
    "lease.min_hold": ({"lease__min_hold": 0}, lambda c: c.lease.min_hold, 0.0),
    "application.command": ({"application": {"command": ["srv", "-p"]}}, lambda c: c.app.command, ["srv", "-p"]),
    "application.start": ({"application": {"start": "a", "stop": "b"}}, lambda c: c.app.start, "a"),
    "application.stop": ({"application": {"start": "a", "stop": "b"}}, lambda c: c.app.stop, "b"),
    "application.stop_timeout": ({"application": {"stop_timeout": 61}}, lambda c: c.app.stop_timeout, 61.0),
    "application.hold_off": ({"application": {"hold_off": 0}}, lambda c: c.app.hold_off, 0.0),
    "application.user": ({"application": {"user": "nobody"}}, lambda c: c.app.user, "nobody"),
    "application.group": ({"application": {"group": "nogroup"}}, lambda c: c.app.group, "nogroup"),
    "application.mode": (
        {"application": {"mode": "warm", "command": "app", "health": {"tcp": 8080}}},
        lambda c: c.app.mode,
        "warm",
    ),
    "application.health.http": (
        {"application": {"health": {"http": "http://127.0.0.1:8080/h"}}},
        lambda c: c.app.health.http,
        "http://127.0.0.1:8080/h",
    ),
    "application.health.tcp": ({"application": {"health": {"tcp": 8080}}}, lambda c: c.app.health.tcp, 8080),
    "application.health.command": (
        {"application": {"health": {"command": "check"}}},
        lambda c: c.app.health.command,
        "check",
    ),
    "application.health.interval": (
        {"application": {"health": {"interval": 7}}},
        lambda c: c.app.health.interval,
        7.0,
    ),
    "application.health.timeout": ({"application": {"health": {"timeout": 0.5}}}, lambda c: c.app.health.timeout, 0.5),
    "application.health.failures": ({"application": {"health": {"failures": 5}}}, lambda c: c.app.health.failures, 5),
    "application.health.start_grace": (
        {"application": {"health": {"start_grace": 90}}},
        lambda c: c.app.health.start_grace,
        90.0,
    ),
    "announce.count": ({"announce__count": 5}, lambda c: c.announce.count, 5),
    "announce.interval": ({"announce__interval": 0.5}, lambda c: c.announce.interval, 0.5),
    "announce.refresh": ({"announce__refresh": 30}, lambda c: c.announce.refresh, 30.0),
    "http.listen": ({"http__listen": "127.0.0.1:9999"}, lambda c: c.http_address, ("127.0.0.1", 9999)),
    # [replication]: parsed here; what each one does is tested in tests/test_agent_replication*.py
    **{
        f"replication.{key}": ({"replication": {"paths": ["/opt/a"], key: value}}, _rep(key), expected)
        for key, value, expected in (
            ("paths", ["/opt/a", "/etc/b.conf"], ("/opt/a", "/etc/b.conf")),
            ("excludes", ["logs/"], ("logs/",)),
            ("interval", 60, 60.0),
            ("ssh_user", "mirror", "mirror"),
            ("ssh_key", "/etc/fos/key", "/etc/fos/key"),
            ("ssh_port", 2200, 2200),
            ("known_hosts", "/etc/fos/known_hosts", "/etc/fos/known_hosts"),
            ("max_delete", 7, 7),
            ("sentinel", ".here", ".here"),
            ("stale_after", 600, 600.0),
            ("timeout", 120, 120.0),
        )
    },
}


EFFECTS.update(NOTIFY_EFFECTS)  # [notify] and http.token: tests/test_agent_config_notify.py


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_each_documented_key_reaches_the_config(key: str) -> None:
    overrides, read, expected = EFFECTS[key]
    assert read(parse(base(**overrides))) == expected
    assert read(parse(base())) != expected  # the value differs from the default: the key, not the default, set it


def test_the_operations_policy_defaults_are_declared_once() -> None:
    policy = parse(base()).policy
    assert (policy.failback, policy.failback_delay, policy.remind_after) == ("manual", 300.0, 14400.0)
    assert (policy.max_takeovers, policy.flap_window) == (3, 3600.0)
    assert parse(base()).nodes[0].priority == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster__failback": "sometimes"}, r"^cluster\.failback = 'sometimes' is unknown: use 'manual' or 'auto'$"),
        ({"cluster__failback": True}, r"^cluster\.failback = True has the wrong type: expected a string$"),
        ({"cluster__failback_delay": -1}, r"^cluster\.failback_delay = -1 must be at least 0$"),
        ({"maintenance__remind_after": 0}, r"^maintenance\.remind_after = 0 must be greater than 0$"),
        ({"maintenance__remind_after": 10**8}, r"^maintenance\.remind_after = 100000000 is more than 2\.592e\+06"),
        ({"maintenance__remind": 60}, r"^maintenance\.remind is not a known setting"),
        ({"flap__max_takeovers": 0}, r"^flap\.max_takeovers = 0 must be at least 1$"),
        ({"flap__max_takeovers": 2.5}, r"^flap\.max_takeovers = 2\.5 must be a whole number"),
        ({"flap__window": math.nan}, r"^flap\.window = nan is not a finite number"),
        ({"flap__window": -5}, r"^flap\.window = -5 must be greater than 0$"),
        ({"nodes": [{"name": "m1", "interface": "eth0", "priority": "high"}]}, r"^nodes\[0\]\.priority = 'high' has"),
    ],
)
def test_bad_operations_policy_values_are_refused_in_one_line(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse(base(**overrides))
    assert "\n" not in str(err.value)


def test_application_mode_defaults_to_cold_and_accepts_warm() -> None:
    assert parse(base()).app.mode == "cold"
    assert parse(base(application={"mode": "cold"})).app.mode == "cold"
    warm = {"mode": "warm", "start": "a", "stop": "b", "health": {"http": "http://127.0.0.1:1/h"}}
    assert parse(base(application=warm)).app.mode == "warm"


@pytest.mark.parametrize(
    ("application", "message"),
    [
        ({"mode": "hot"}, r"^application\.mode = 'hot' is unknown: use 'cold' or 'warm'$"),
        ({"mode": "Warm", "command": "a", "health": {"tcp": 1}}, r"^application\.mode = 'Warm' is unknown"),
        ({"mode": 1}, r"^application\.mode = 1 has the wrong type: expected a string$"),
        ({"mode": "warm", "health": {"tcp": 1}}, r"^application\.mode = 'warm' needs an application: set applic"),
        ({"mode": "warm", "command": "a"}, r"^application\.mode = 'warm' needs application\.health \(http, tcp"),
    ],
)
def test_bad_application_mode_is_refused_in_one_line(application: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse(base(application=application))
    assert "\n" not in str(err.value)


def readme_keys() -> set[str]:
    text = (ROOT / "README.md").read_text()
    sections = [
        text[text.index("## Configuration") : text.index("### Timing that fos refuses")],
        text[text.index("## Replication") : text.index("## fos doctor")],  # the [replication] keys' own table
    ]
    return {k for section in sections for k in re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.M)}


def example_keys() -> set[str]:
    keys, table = set(), ""
    for line in (ROOT / "examples" / "fos.toml").read_text().splitlines():
        header = re.match(r"^\[\[?([a-z_.]+)\]\]?", line)
        if header:
            table = header.group(1)
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key:
            keys.add(f"{table}.{key.group(1)}")
    return keys


def test_every_key_in_readme_and_the_example_has_an_effect_test() -> None:
    assert readme_keys() == set(EFFECTS)
    assert example_keys() <= set(EFFECTS), example_keys() - set(EFFECTS)
    assert len(example_keys()) >= 30


def test_warm_mode_refuses_a_health_check_through_the_common_ip() -> None:
    """Warm mode: a standby competes only while ITS application answers healthy. A health URL on the common IP
    reaches the active node's application from every node, so a standby whose own app is dead competes, takes
    over and serves nothing (review h-rev1)."""
    warm = {"mode": "warm", "command": "app", "health": {"http": "http://10.1.2.50:8080/health"}}
    with pytest.raises(ConfigError, match=r"^application\.health\.http") as err:
        parse(base(application=warm))
    assert "\n" not in str(err.value)
