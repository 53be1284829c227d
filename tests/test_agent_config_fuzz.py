"""Mutations of examples/fos.toml, as a new user might get them wrong: every key dropped, wrong types, nan, ±inf,
negative, zero, huge, empty strings, non-UTF-8 bytes. Each must give a Config or a one-line ConfigError that
shows no secret: never another exception (a traceback). A sample runs `fos config check` as a process."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ConfigError, check_listen, load, parse
from agent.timing import check

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fos.toml"
SECRET = "S3cr3t-Fuzz-Pw"
ENV = {"FOS_DB_PASSWORD": SECRET}
# Keys the example leaves commented out (or absent): mutated by adding them.
OPTIONAL = [
    ("cluster", "netmask"),
    ("cluster", "address_driver"),
    ("cluster", "probe_conflict"),
    ("cluster", "probe_timeout"),
    ("database", "dialect"),
    ("database", "call_timeout"),
    ("database", "schema"),
    ("lease", "fence_margin"),
    ("lease", "min_hold"),
    ("application", "command"),
    ("application", "user"),
    ("application", "group"),
    ("application", "health", "tcp"),
    ("application", "health", "command"),
]
VALUES: list[Any] = [
    [1],
    {"a": 1},
    True,
    "x",
    "",
    "a\nb",
    math.nan,
    math.inf,
    -math.inf,
    -1,
    -0.5,
    0,
    0.0,
    10**30,
    1e300,
    2**31,
]
# Values that carry the secret: given to the DSN only (a cluster name equal to the password is no secret).
DSN_VALUES: list[Any] = [[f"Pwd={SECRET}"], {"pwd": SECRET}, 12345, f"Pwd={{{SECRET}", "Pwd=${NOT_SET_ANYWHERE}"]


def example_text() -> str:
    # Literal addresses instead of example.com names: nothing in a test may resolve names outside loopback.
    return EXAMPLE.read_text().replace("m1.example.com", "192.0.2.1").replace("m2.example.com", "192.0.2.2")


def example() -> dict[str, Any]:
    return tomllib.loads(example_text())


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict):
                yield from leaf_paths(value, (*prefix, i))


def with_value(doc: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool = False) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    parent: Any = out
    for step in path[:-1]:
        if isinstance(parent, dict) and step not in parent:
            parent[step] = {}
        parent = parent[step]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def outcome(doc: dict[str, Any]) -> Config | ConfigError:
    """Parse and check as `fos run` would; anything but a Config or a ConfigError fails the test."""
    try:
        cfg = parse(doc, "fuzz.toml", ENV)
        check(cfg)
        check_listen(cfg)
        return cfg
    except ConfigError as exc:
        return exc


def assert_clean(result: Config | ConfigError, what: str) -> None:
    if isinstance(result, ConfigError):
        message = str(result)
        assert "\n" not in message, what
        assert SECRET not in message, what
        assert "Traceback" not in message and message, what


def mutations() -> Iterator[tuple[str, dict[str, Any]]]:
    doc = example()
    paths = list(leaf_paths(doc)) + OPTIONAL
    for path in paths:
        if path in list(leaf_paths(doc)):
            yield f"drop {path}", with_value(doc, path, None, drop=True)
        values = VALUES + (DSN_VALUES if path == ("database", "dsn") else [])
        for value in values:
            yield f"{path} = {value!r}", with_value(doc, path, value)


def test_the_example_itself_is_a_valid_config() -> None:
    assert isinstance(outcome(example()), Config)


def test_every_mutation_gives_a_config_or_a_one_line_error_without_secrets() -> None:
    count = refused = 0
    for what, doc in mutations():
        result = outcome(doc)
        assert_clean(result, what)
        count += 1
        refused += isinstance(result, ConfigError)
    assert count > 800 and refused > count // 2  # the mutations did run, and most of them are refused


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_numeric_key_of_the_example_refuses_non_finite_values(value: float) -> None:
    doc = example()
    numeric = [p for p in list(leaf_paths(doc)) + OPTIONAL if isinstance(_get(doc, p), int | float)]
    numeric += [("cluster", "probe_timeout"), ("database", "call_timeout"), ("lease", "fence_margin")]
    assert len(numeric) >= 15
    for path in numeric:
        result = outcome(with_value(doc, path, value))
        assert isinstance(result, ConfigError), f"{path} = {value} was accepted"
        assert str(path[-1]) in str(result)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        try:
            doc = doc[step]
        except (KeyError, IndexError):
            return None
    return doc


def test_non_utf8_bytes_and_truncations_of_the_file_are_one_line_errors(tmp_path: Path) -> None:
    raw = example_text().encode()
    path = tmp_path / "fos.toml"
    for offset in range(0, len(raw), 41):
        for variant in (raw[:offset] + b"\xff" + raw[offset:], raw[:offset], raw[:offset] + b"\xc3"):
            path.write_bytes(variant)
            try:
                result: Config | ConfigError = load(str(path), ENV)
                check(result)
            except ConfigError as exc:
                result = exc
            assert_clean(result, f"offset {offset}")
            if b"\xff" in variant:
                assert isinstance(result, ConfigError) and "is not UTF-8 text" in str(result)


SAMPLES = [
    ("ttl = 180", "ttl = nan", "lease.ttl = nan is not a finite number"),
    ("failures = 3", "failures = inf", "application.health.failures = inf must be a whole number"),
    ("count = 3", "count = 2.5", "announce.count = 2.5 must be a whole number"),
    ("ttl = 180", "ttl = 3000000", "lease.ttl = 3000000 is more than 86400"),
    ('listen = "0.0.0.0:8470"', 'listen = "localhost"', "http.listen = 'localhost' is not an address"),
    ("dsn = ", f'dsn = ["Pwd={SECRET}"]\nold_dsn = ', "database.dsn has the wrong type (list)"),
    ('name = "helpdesk"', 'name = "caf\udcff"', "is not UTF-8 text"),
]


@pytest.mark.parametrize(("old", "new", "message"), SAMPLES)
def test_fos_config_check_exits_2_with_one_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = example_text()
    assert old in text
    path = tmp_path / "fos.toml"
    path.write_bytes(text.replace(old, new, 1).encode("utf-8", "surrogateescape"))
    env = {**os.environ, **ENV}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert SECRET not in result.stderr + result.stdout and result.stdout == ""
