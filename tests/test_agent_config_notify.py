"""[notify] and http.token: parsing, one-line errors naming the key, secrets never shown. What each key does at run
time is tested where it acts (tests/test_agent_notifier.py, tests/test_agent_notify_netns.py, test_agent_page.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ConfigError, parse
from agent.config_notify import NOTIFY_KINDS, require_secrets, webhook_shown


def base(notify: dict[str, Any] | None = None, http: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cluster": {"name": "helpdesk", "common_ip": "10.1.2.50/24"},
        "nodes": [{"name": "m1", "interface": "eth0"}, {"name": "m2", "interface": "eth0"}],
        "database": {"dsn": "Driver=SQLite3;Database=/tmp/x.db"},
        "lease": {"ttl": 3, "heartbeat": 1},
    }
    if notify is not None:
        data["notify"] = notify
    if http is not None:
        data["http"] = http
    return data


ENV = {"PW": "s3cret-Pass", "HOOK": "tok-123", "TOKEN": "t" * 24}


def _n(key: str) -> Callable[[Config], Any]:
    return lambda c: getattr(c.notify, key)


# key -> (overrides of base(), what to read from the Config, the value it must then have); used by
# tests/test_agent_config.py's every-documented-key test as well.
NOTIFY_EFFECTS: dict[str, tuple[dict[str, Any], Any, Any]] = {
    **{
        f"notify.{key}": ({"notify": {"email_to": "a@example.com", key: value}}, _n(key), expected)
        for key, value, expected in (
            ("email_from", "fos@example.com", "fos@example.com"),
            ("smtp_host", "mail.example.com", "mail.example.com"),
            ("smtp_port", 2525, 2525),
            ("smtp_security", "ssl", "ssl"),
            ("timeout", 5, 5.0),
            ("events", ["fenced", "master_node_down"], ("fenced", "master_node_down")),
            ("min_interval", 300, 300.0),
            ("standby_missing_after", 30, 30.0),
            ("database_unreachable_after", 45, 45.0),
            ("takeover_after", 120, 120.0),
        )
    },
    "notify.email_to": (
        {"notify": {"email_to": "a@example.com, b@example.com"}},
        _n("email_to"),
        ("a@example.com", "b@example.com"),
    ),
    "notify.smtp_user": (
        {"notify": {"email_to": "a@x.org", "smtp_user": "u", "smtp_password": "s3cret-Pass"}},
        _n("smtp_user"),
        "u",
    ),
    "notify.smtp_password": (
        {"notify": {"email_to": "a@x.org", "smtp_user": "u", "smtp_password": "s3cret-Pass"}},
        _n("smtp_password"),
        "s3cret-Pass",
    ),
    "notify.webhooks": (
        {"notify": {"webhooks": ["https://hooks.example/T/tok-123"]}},
        _n("webhooks"),
        ("https://hooks.example/T/tok-123",),
    ),
    "http.token": ({"http": {"token": "t" * 24}}, lambda c: c.http_token, "t" * 24),
}


def _parse(overrides: dict[str, Any]) -> Config:
    return parse(base(overrides.get("notify"), overrides.get("http")), env=ENV)


@pytest.mark.parametrize("key", sorted(NOTIFY_EFFECTS))
def test_each_notify_key_reaches_the_config(key: str) -> None:
    overrides, read, expected = NOTIFY_EFFECTS[key]
    assert read(_parse(overrides)) == expected
    assert read(_parse({})) != expected


def test_defaults_mean_off_all_kinds_starttls_and_twice_the_ttl() -> None:
    cfg = _parse({})
    assert not cfg.notify.enabled and cfg.http_token is None
    assert cfg.notify.events == NOTIFY_KINDS and cfg.notify.smtp_security == "starttls" and cfg.notify.port == 587
    assert cfg.notify.missing_after(cfg.lease.ttl) == 6.0 and cfg.notify.unreachable_after(cfg.lease.ttl) == 6.0
    assert _parse({"notify": {"email_to": ["a@example.com"], "smtp_security": "ssl"}}).notify.port == 465


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ({"email_to": "ops@example.com\r\nBcc: x@evil.example"}, r"^notify\.email_to\[0\] = .* is not a mail address"),
        ({"email_to": ["ops"]}, r"^notify\.email_to\[0\] = 'ops' is not a mail address"),
        ({"email_to": "a@b.c", "smtp_security": "tls"}, r"^notify\.smtp_security = 'tls' is unknown"),
        ({"email_to": "a@b.c", "smtp_port": 70000}, r"^notify\.smtp_port = 70000 is more than 65535"),
        ({"events": ["master_node_up"]}, r"^notify\.events\[0\] = 'master_node_up' is not a notification kind"),
        ({"webhooks": ["ftp://x/${HOOK}"]}, r"^notify\.webhooks\[0\] = 'ftp://x/\*\*\*' is not an http\(s\) URL"),
        ({"smtp_user": "u"}, r"^notify\.smtp_user and notify\.smtp_password go together"),
        (
            {"smtp_user": "u", "smtp_password": "${PW}", "smtp_security": "none", "smtp_host": "mail.example.com"},
            r"would cross the network in clear",
        ),
        ({"timeout": 40}, r"^notify\.takeover_after = 60 is shorter than twice notify\.timeout"),
        ({"sms_to": "123"}, r"^notify\.sms_to is not a known setting"),
    ],
)
def test_bad_notify_settings_name_the_key_and_never_the_secret(notify: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _parse({"notify": notify})
    assert "s3cret" not in str(err.value) and "tok-123" not in str(err.value)


def test_a_short_http_token_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match=r"^http\.token is shorter than 16 characters") as err:
        parse(base(http={"token": "${T}"}), env={"T": "short-secret"})
    assert "short-secret" not in str(err.value)


def test_secrets_and_webhook_urls_take_env_references() -> None:
    notify = {
        "email_to": "a@b.c",
        "smtp_user": "u",
        "smtp_password": "${PW}",
        "webhooks": ["https://h.example/${HOOK}"],
    }
    cfg = _parse({"notify": notify, "http": {"token": "${TOKEN}"}})
    assert cfg.notify.smtp_password == "s3cret-Pass" and cfg.notify.webhooks == ("https://h.example/tok-123",)
    assert cfg.http_token == ENV["TOKEN"]


def test_unset_notify_secrets_are_refused_only_by_the_commands_that_need_them(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    (tmp_path / "fos.toml").write_text(
        '[cluster]\nname = "c"\naddress_driver = "none"\n[[nodes]]\nname = "m1"\n'
        f'[database]\ndsn = "Driver=SQLite3;Database={db}"\n[lease]\nttl = 4\nheartbeat = 1\n'
        '[notify]\nemail_to = "a@example.com"\nsmtp_user = "u"\nsmtp_password = "${FOS_T_NOPE}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "FOS_T_NOPE"}

    def fos(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", *args, "--config", str(tmp_path / "fos.toml")]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)

    assert fos("init-db").returncode == 0, "init-db needs the DSN, not the SMTP password"
    assert fos("status").returncode == 0
    for args, what in ((("run", "--node", "m1", "--state-dir", str(tmp_path)), "fos run"), (("notify", "test"), "")):
        out = fos(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "notify.smtp_password uses ${FOS_T_NOPE}, which is not set in the environment: export it" in out.stderr
        assert what in out.stderr


def test_unset_secrets_are_deferred_for_config_check() -> None:
    data = base({"email_to": "a@b.c", "smtp_user": "u", "smtp_password": "${PW2}"}, {"token": "${TOK2}"})
    assert set(parse(data, env={}, defer_env=True).unset_env) == {"PW2", "TOK2"}


def test_secrets_are_not_in_the_configs_repr() -> None:
    cfg = _parse({**NOTIFY_EFFECTS["notify.smtp_password"][0], "http": {"token": "${TOKEN}"}})
    text = repr(cfg) + repr(_parse(NOTIFY_EFFECTS["notify.webhooks"][0]))
    assert "s3cret" not in text and "tok-123" not in text and "t" * 24 not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/XyZ", "https://hooks.slack.com/***"),
        ("http://10.0.0.5:8099/hook?token=abc", "http://10.0.0.5:8099/***"),
        ("https://user:pw@[fd00::1]:443/x", "https://[fd00::1]:443/***"),
    ],
)
def test_webhook_urls_are_shown_without_path_query_or_credentials(url: str, shown: str) -> None:
    assert webhook_shown(url) == shown


@pytest.mark.parametrize(
    ("unset", "http", "notify", "refused"),
    [
        ((("http.token", "T"),), True, False, "http.token"),
        ((("http.token", "T"),), False, True, None),  # no HTTP endpoint, or fos notify test: not needed
        ((("notify.webhooks", "H"),), True, True, "notify.webhooks"),
        ((("notify.smtp_password", "P"),), True, False, None),  # notifications off: not needed
        ((), True, True, None),
    ],
)
def test_require_secrets_refuses_only_what_the_command_needs(
    unset: tuple[tuple[str, str], ...], http: bool, notify: bool, refused: str | None
) -> None:
    if refused is None:
        require_secrets(unset, http, notify, "fos run")
    else:
        with pytest.raises(ConfigError, match=rf"^{re.escape(refused)} uses \$\{{"):
            require_secrets(unset, http, notify, "fos run")
