"""The people-facing settings of the cluster file: `[notify]` (mail and webhooks, agent/notifier.py) and
`http.token` (agent/page.py). Parsed here, wired into agent/config.py's Config as `notify` and `http_token`.

Secrets (smtp_password, http.token, tokens inside webhook URLs) may be written as `${ENV}`; like the DSN's they
are never shown: errors name the key, never the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .config_values import DAY, DEFERRED_SECRET, ConfigError, TableReader, expand_env

# Every notification kind fos sends. The first block comes from events the agents record themselves; the second
# from the operations commands (issue #11, by their EventKind values); `test` only from `fos notify test`.
NOTIFY_KINDS = (
    "master_node_down",
    "fenced",
    "stepped_down",
    "standby_missing",
    "standby_back",
    "database_unreachable",
    "database_back",
    "switchover_done",
    "switchover_failed",
    "maintenance_on",
    "maintenance_off",
    "maintenance_reminder",
    "disabled",
    "enabled",
    "flapping",
)
SECURITY = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
_ADDRESS = re.compile(r"[^@\s,<>\"';:\\]+@[A-Za-z0-9.-]+")  # no whitespace, CR/LF or header syntax
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[?[0-9A-Fa-f:.]+\]?")
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def _bounded(default: Any, low: float = 0.0, high: float = DAY, low_ok: bool = True) -> Any:
    return field(default=default, metadata={"low": low, "high": high, "low_ok": low_ok, "fix": ""})


@dataclass(frozen=True)
class NotifyConfig:
    """[notify]. No email_to and no webhooks: notifications are off (the notifier does not start)."""

    email_to: tuple[str, ...] = ()
    email_from: str | None = None  # None: fos@<this host's name>
    smtp_host: str = "localhost"
    smtp_port: int | None = _bounded(None, low=1, high=65535)  # None: 587 (starttls), 465 (ssl), 25 (none)
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    timeout: float = _bounded(10.0, low=0.0, high=300, low_ok=False)  # one delivery attempt (SMTP or webhook)
    webhooks: tuple[str, ...] = field(default=(), repr=False)  # URLs may carry tokens
    events: tuple[str, ...] = NOTIFY_KINDS  # the kinds to send
    min_interval: float = _bounded(0.0)  # seconds: repeats of one kind within it are merged into one message
    standby_missing_after: float | None = _bounded(None, low_ok=False)  # None: 2 x lease.ttl
    database_unreachable_after: float | None = _bounded(None, low_ok=False)  # None: 2 x lease.ttl
    takeover_after: float = _bounded(60.0, low=1.0)  # an unsent message nobody refreshed is taken over after it

    @property
    def enabled(self) -> bool:
        return bool(self.email_to or self.webhooks)

    @property
    def port(self) -> int:
        return self.smtp_port if self.smtp_port is not None else DEFAULT_PORTS[self.smtp_security]

    def missing_after(self, ttl: float) -> float:
        return self.standby_missing_after if self.standby_missing_after is not None else 2 * ttl

    def unreachable_after(self, ttl: float) -> float:
        return self.database_unreachable_after if self.database_unreachable_after is not None else 2 * ttl


def webhook_shown(url: str) -> str:
    """A webhook URL as logs, events, pages and `fos notify test` show it: scheme, host and port only (Slack- and
    Teams-style URLs carry their token in the path)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a webhook URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/***"


Unset = list[tuple[str, str]]  # (dotted key, VAR) of ${VAR}s not set in the environment


def _secret(r: TableReader, key: str, env: dict[str, str] | None, unset: Unset) -> str | None:
    """A secret value with ${VAR} expanded; an unset VAR becomes DEFERRED_SECRET and is listed in `unset`."""
    raw: str | None = r.get(key, str)
    if raw is None:
        return None
    return _expand(raw, r._key(key), env, unset)


def _expand(raw: str, where: str, env: dict[str, str] | None, unset: Unset) -> str:
    # Always deferred: only `fos run` (and `fos notify test`) need these, not init-db, status or mirror, which
    # must keep working where only the DSN's variables are set. require_secrets() refuses them where needed.
    environ = os.environ if env is None else env
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw):
        if name not in environ:
            unset.append((where.split("[")[0], name))
            raw = raw.replace("${" + name + "}", DEFERRED_SECRET)
    return expand_env(raw, where, env)


def _addresses(r: TableReader, key: str) -> tuple[str, ...]:
    where = r._key(key)
    value = r.get(key, (str, list), None)
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    out: list[str] = []
    for i, v in enumerate(items):
        if not isinstance(v, str) or not _ADDRESS.fullmatch(v.strip()):
            raise ConfigError(
                f"{where}[{i}] = {str(v)[:80]!r} is not a mail address: write it like ops@example.com "
                "(a list, or one string with commas)"
            )
        out.append(v.strip())
    return tuple(dict.fromkeys(out))


def _webhooks(r: TableReader, env: dict[str, str] | None, unset: Unset) -> tuple[str, ...]:
    raw = r.get("webhooks", (list, str), [])
    items = [raw] if isinstance(raw, str) else raw
    out: list[str] = []
    for i, v in enumerate(items):
        where = f"{r._key('webhooks')}[{i}]"
        if not isinstance(v, str):
            raise ConfigError(f"{where} is not a string: write each webhook URL as a quoted string")
        url = _expand(v, where, env, unset)
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            ok = False
        if not ok or any(c.isspace() for c in url):
            raise ConfigError(
                f"{where} = {webhook_shown(url)!r} is not an http(s) URL: write it like https://host/path"
            )
        out.append(url)
    return tuple(out)


def parse_notify(r: TableReader, env: dict[str, str] | None = None) -> tuple[NotifyConfig, tuple[tuple[str, str], ...]]:
    """[notify] into a NotifyConfig, plus the (key, VAR) of ${VAR}s left unset. ConfigError names the key."""
    unset: Unset = []
    security = r.get("smtp_security", str, "starttls").lower()
    if security not in SECURITY:
        raise ConfigError(f"notify.smtp_security = {security!r} is unknown: use one of {', '.join(SECURITY)}")
    host = r.get("smtp_host", str, NotifyConfig.smtp_host)
    if not _HOST.fullmatch(host):
        raise ConfigError(
            f"notify.smtp_host = {host[:80]!r} is not a host name or address: write it like mail.example.com"
        )
    events = r.get("events", list, None)
    if events is not None:
        for i, kind in enumerate(events):
            if kind not in NOTIFY_KINDS:
                raise ConfigError(
                    f"notify.events[{i}] = {str(kind)[:40]!r} is not a notification kind: use some of "
                    f"{', '.join(NOTIFY_KINDS)}"
                )
    sender = _addresses(r, "email_from")
    if len(sender) > 1:
        raise ConfigError("notify.email_from lists several addresses: give one")
    user = r.get("smtp_user", str)
    password = _secret(r, "smtp_password", env, unset)
    if (user is None) != (password is None):
        raise ConfigError("notify.smtp_user and notify.smtp_password go together: set both for AUTH, or neither")
    if security == "none" and password is not None and host not in ("localhost", "127.0.0.1", "::1"):
        raise ConfigError(
            "notify.smtp_password with smtp_security = 'none' would cross the network in clear: use 'starttls' or 'ssl'"
        )
    cfg = NotifyConfig(
        email_to=_addresses(r, "email_to"),
        email_from=sender[0] if sender else None,
        smtp_host=host,
        smtp_port=r.integer(NotifyConfig, "smtp_port"),
        smtp_security=security,
        smtp_user=user,
        smtp_password=password,
        timeout=r.number(NotifyConfig, "timeout"),
        webhooks=_webhooks(r, env, unset),
        events=tuple(dict.fromkeys(events)) if events is not None else NOTIFY_KINDS,
        min_interval=r.number(NotifyConfig, "min_interval"),
        standby_missing_after=r.number(NotifyConfig, "standby_missing_after"),
        database_unreachable_after=r.number(NotifyConfig, "database_unreachable_after"),
        takeover_after=r.number(NotifyConfig, "takeover_after"),
    )
    r.done()
    if cfg.takeover_after < 2 * cfg.timeout:
        raise ConfigError(
            f"notify.takeover_after = {cfg.takeover_after:g} is shorter than twice notify.timeout "
            f"({cfg.timeout:g}): a slow but live sender would be taken over; raise it"
        )
    return cfg, tuple(dict.fromkeys(unset))


def parse_http_token(
    r: TableReader, env: dict[str, str] | None = None
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """http.token (usually `${ENV}`): when set, GET /, /status and /metrics need it. Also the unset (key, VAR)."""
    unset: Unset = []
    token = _secret(r, "token", env, unset)
    if token is not None and (len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token)):
        raise ConfigError("http.token is shorter than 16 characters or holds spaces: use a long random token")
    return token, tuple(unset)


def require_secrets(unset: tuple[tuple[str, str], ...], http: bool, notify: bool, what: str) -> None:
    """Refuse (ConfigError naming the key) a secret that `what` needs but whose ${VAR} is not set: http.token
    when `http`, the [notify] ones when `notify`."""
    for key, name in unset:
        if (http and key == "http.token") or (notify and key.startswith("notify.")):
            raise ConfigError(f"{key} uses ${{{name}}}, which is not set in the environment: export it for {what}")
