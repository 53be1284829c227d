"""Reading single values of the cluster file: the typed table reader (types, finite numbers within declared
bounds, URLs, names), addresses, DSN templates, and the redaction of secrets in what is shown.

Every problem is a ConfigError whose one-line message names the key and the fix and never shows a secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import MISSING, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lease.dsn import quote_odbc_value
from lease.names import MAX_NAME

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # 63: PostgreSQL's limit, the smallest of the four
ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")  # a POSIX user/group name or a numeric id
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_WORDS = ("password", "passwd", "pwd", "token", "secret")
_SECRET_QUERY = re.compile(r"(?i)(password|passwd|pwd|token|secret|key|auth)")

DAY = 86400.0  # upper bound of every duration: no sane failover setting is longer than a day
# lease.ttl is stored as ttl_ms in a 32-bit INTEGER column: 2147483 s is the hard limit; a day is far below it.
TTL_MAX_S = DAY
DEFERRED_SECRET = "fos-config-check-placeholder"  # what `fos config check` puts where an unset ${VAR} was


class ConfigError(Exception):
    """Bad configuration; the message is one line and names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def _field(cls: type, name: str) -> Any:
    return next(f for f in fields(cls) if f.name == name)


def default_of(cls: type, name: str) -> Any:
    """The one declared default of a config field."""
    f = _field(cls, name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def is_secret_key(dotted: str) -> bool:
    """Keys whose values are never printed: the DSN, and anything named like a password or token."""
    lowered = dotted.lower()
    return lowered == "database.dsn" or any(w in lowered for w in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """The URL without credentials (user info, and query values named like secrets), for logs, events and pages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        query = parts.query
        if query and _SECRET_QUERY.search(query):
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL: still never show what looks like user info
        return re.sub(r"//[^/@]*@", "//***@", url)


def scrub_url(text: str, url: str | None) -> str:
    """`text` (an error message that may quote `url`) with the URL's credentials replaced by ***."""
    if not url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [s for s in (parts.password, parts.username) if s and len(s) >= 3]  # shorter: mangles the text
    except ValueError:
        secrets = []
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def shown(dotted: str, value: Any) -> str:
    if is_secret_key(dotted):
        return f"({_type_name(value)})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(value: float) -> str:
    """A number for a message; a very long TOML integer is shown by its size."""
    if isinstance(value, int):
        digits = str(value)
        return digits if len(digits) <= 20 else f"a {len(digits.lstrip('-'))}-digit number"
    return f"{value:g}"


def _type_name(value: Any) -> str:
    names = {bool: "true/false", int: "number", float: "number", str: "string", list: "list", dict: "table"}
    return names.get(type(value), type(value).__name__)


class TableReader:
    """Typed access to a TOML table that remembers the dotted path, for messages."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        shown = key if _PLAIN_KEY.fullmatch(key) else repr(key)
        return f"{self.where}.{shown}" if self.where else shown

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self._key(key)} is missing: add it to the config file")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            where = self._key(key)
            if is_secret_key(where):
                raise ConfigError(f"{where} has the wrong type {shown(where, value)}: expected {_kind_name(kind)}")
            raise ConfigError(f"{where} = {shown(where, value)} has the wrong type: expected {_kind_name(kind)}")
        return value

    def _range(self, cls: type, key: str, attr: str | None) -> tuple[Any, float, float, bool, str]:
        f = _field(cls, attr or key)
        meta = f.metadata
        return default_of(cls, attr or key), meta["low"], meta["high"], meta["low_ok"], meta["fix"]

    def _check_range(self, key: str, value: float, low: float, high: float, low_ok: bool, fix: str) -> None:
        if fix and (value < low or (value == low and not low_ok) or value > high):
            raise ConfigError(f"{self._key(key)} = {_num(value)} {fix}")
        if value < low or (value == low and not low_ok):
            bound = "at least" if low_ok else "greater than"
            raise ConfigError(f"{self._key(key)} = {_num(value)} must be {bound} {low:g}")
        if value > high:
            raise ConfigError(f"{self._key(key)} = {_num(value)} is more than {high:g}, the most fos accepts: lower it")

    def number(self, cls: type, key: str, attr: str | None = None) -> Any:
        """A duration or other real number: finite, within the field's declared bounds."""
        default, low, high, low_ok, fix = self._range(cls, key, attr)
        value = self.get(key, (int, float), default)
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self._key(key)} = {value} is not a finite number: give a value like {default or 1:g}")
        self._check_range(key, value, low, high, low_ok, fix)  # before float(): a huge TOML integer overflows a float
        return float(value)

    def integer(self, cls: type, key: str, attr: str | None = None) -> Any:
        """A count, port or priority: a TOML integer (no fraction, nan or inf), within the declared bounds."""
        default, low, high, low_ok, fix = self._range(cls, key, attr)
        value = self.get(key, (int, float), default)
        if value is None:
            return None
        if isinstance(value, float):
            raise ConfigError(f"{self._key(key)} = {value} must be a whole number, like {default or 1}")
        self._check_range(key, value, low, high, low_ok, fix)
        return int(value)

    def text(self, key: str, pattern: re.Pattern[str] | None = None, what: str = "", fix: str = "") -> str | None:
        value: str | None = self.get(key, str)
        if value is not None and pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{self._key(key)} = {shown(self._key(key), value)} is not {what}: {fix}")
        return value

    def url(self, key: str, credentials_ok: bool = False) -> str | None:
        """An http(s) URL with a host; unless credentials_ok, without user name or password (it is displayed)."""
        value: str | None = self.get(key, str)
        if value is None:
            return None
        where = self._key(key)
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                f"{where} = {redact_url(value)!r} is not an http(s) URL with a host: write it like http://host:8080/"
            )
        if not credentials_ok and (parts.username or parts.password):
            raise ConfigError(f"{where} contains a user name or password: remove it, fos shows this URL in status")
        return value

    def table(self, key: str) -> TableReader:
        return TableReader(self.get(key, dict, {}), self._key(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self._key(unknown[0])} is not a known setting: check its spelling against examples/fos.toml"
            )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def name_value(value: str, field_name: str) -> str:
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"{field_name} = {shown(field_name, value)} is not a valid name: use 1-{MAX_NAME} letters, digits, "
            "'.', '_' or '-'"
        )
    return value


def expand_env(value: str, field_name: str, env: dict[str, str] | None = None) -> str:
    """Replace ${VAR} with the environment's value, so secrets need not be written in the file."""
    environ = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in environ:
            raise ConfigError(f"{field_name} uses ${{{m.group(1)}}}, which is not set in the environment: export it")
        return environ[m.group(1)]

    return _ENV.sub(sub, value)


def expand_dsn(template: str, env: dict[str, str] | None = None, defer: bool = False) -> tuple[str, tuple[str, ...]]:
    """database.dsn with each ${VAR} replaced by the environment's value, quoted by ODBC's rules so a password
    with `;` or `}` stays one attribute. With defer, an unset VAR becomes DEFERRED_SECRET (for `fos config check`,
    which never connects) and its name is returned; without, it is an error."""
    environ = os.environ if env is None else env
    refs: list[str] = []

    def mark(m: re.Match[str]) -> str:  # hide ${VAR} from the ODBC parse below: its braces are not ODBC's
        refs.append(m.group(1))
        return f"\0{len(refs) - 1}\0"

    unset: list[str] = []

    def value_of(index: int) -> str:
        name = refs[index]
        if name in environ:
            return environ[name]
        if not defer:
            raise ConfigError(f"database.dsn uses ${{{name}}}, which is not set in the environment: export it")
        unset.append(name)
        return DEFERRED_SECRET

    def substitute(text: str, escape_braces: bool) -> str:
        def one(m: re.Match[str]) -> str:
            v = value_of(int(m.group(1)))
            return v.replace("}", "}}") if escape_braces else v

        return re.sub(r"\0(\d+)\0", one, text)

    if "\0" in template:
        raise ConfigError("database.dsn contains a NUL character: remove it")
    marked = _ENV.sub(mark, template)
    out: list[str] = []
    i = 0
    while i < len(marked):
        eq, semi = marked.find("=", i), marked.find(";", i)
        if eq < 0 or (0 <= semi < eq):  # a segment without '=': keep it as written
            end = len(marked) if semi < 0 else semi
            out.append(substitute(marked[i:end], False))
            i = end + 1
            continue
        key = marked[i : eq + 1]
        if marked.startswith("{", eq + 1):
            j = eq + 2
            while True:
                close = marked.find("}", j)
                if close < 0:
                    raise ConfigError("database.dsn has a '{' that is never closed: end the braced value with '}'")
                if marked.startswith("}}", close):
                    j = close + 2
                    continue
                break
            end = marked.find(";", close)
            end = len(marked) if end < 0 else end
            out.append(key + substitute(marked[eq + 1 : end], True))
        else:
            end = marked.find(";", eq)
            end = len(marked) if end < 0 else end
            raw = marked[eq + 1 : end]
            value = substitute(raw, False)
            out.append(key + (quote_odbc_value(value) if "\0" in raw else value))
        i = end + 1
    dsn = ";".join(out) + (";" if marked.endswith(";") else "")
    return dsn, tuple(dict.fromkeys(unset))


def parse_listen(text: str, field_name: str = "http.listen") -> tuple[str, int]:
    """host:port ([v6]:port for IPv6; an empty host means every address) -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]*)\]:(\d{1,5})|([^:\[\]]*):(\d{1,5})", text)
    host = (m.group(1) if m.group(1) is not None else m.group(3)) if m else ""
    port = int(m.group(2) or m.group(4)) if m else 0
    ok = m is not None and 1 <= port <= 65535
    if ok and m is not None and m.group(1) is not None:
        try:
            ok = ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    elif ok and host:
        ok = bool(_HOSTNAME.fullmatch(host))
    if not ok:
        raise ConfigError(
            f"{field_name} = {shown(field_name, text)} is not an address to listen on: use host:port with a port "
            "1-65535, e.g. 0.0.0.0:8470, [::]:8470 or 127.0.0.1:8470"
        )
    return host, port


def parse_common_ip(
    text: str, netmask: str | None, field_name: str
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """`a.b.c.d/prefix`, or an address with a dotted netmask; a bare IPv4 address gets 255.255.255.0."""
    try:
        if "/" in text:
            if netmask:
                raise ConfigError(f"{field_name} has a prefix and cluster.netmask is set too: keep only one")
            iface = ipaddress.ip_interface(text)
        else:
            addr = ipaddress.ip_address(text)
            mask = netmask or ("255.255.255.0" if addr.version == 4 else "64")
            iface = ipaddress.ip_interface(f"{text}/{mask}")
    except ValueError as exc:
        raise ConfigError(f"{field_name} = {shown(field_name, text)} is not an address: {exc}") from None
    if iface.ip == iface.network.network_address and iface.network.prefixlen < iface.max_prefixlen:
        raise ConfigError(f"{field_name} = {text!r} is the network address of its subnet: choose a host address")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise ConfigError(f"{field_name} = {text!r} cannot be a common IP: choose a unicast address on the LAN")
    return iface


def command_value(reader: TableReader, key: str) -> str | list[str] | None:
    value = reader.get(key, (str, list))
    if isinstance(value, list) and (not value or not all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{reader._key(key)} must be a string or a non-empty list of strings")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{reader._key(key)} is empty: give the command, or remove the key")
    return value  # type: ignore[no-any-return]
