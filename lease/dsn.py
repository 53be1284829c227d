"""ODBC connection strings, read and written by ODBC's own rules, without importing a driver.

Grammar (ODBC SQLDriverConnect): `key=value` attributes separated by `;`. A value in braces may contain `;`, `=`
and `{`; inside braces a `}` is written `}}`. A regular expression cannot find where such a value ends, which is
why secrets leaked through the old redaction; this tokenizer can.
"""

from __future__ import annotations

from dataclasses import dataclass

_SECRET_KEYS = ("pwd", "password", "accesstoken", "access_token", "secret", "token")


@dataclass(frozen=True)
class Attribute:
    key: str  # as written, without surrounding blanks
    raw: str  # the value exactly as written (with its braces), without the separator
    terminated: bool = True  # False for a brace-quoted value whose closing brace never came


def tokenize(dsn: str) -> list[Attribute]:
    """Split a connection string into its attributes; text without `=` becomes an attribute with no value."""
    out: list[Attribute] = []
    i, n = 0, len(dsn)
    while i < n:
        if dsn[i] == ";":
            i += 1
            continue
        eq = dsn.find("=", i)
        semi = dsn.find(";", i)
        if eq < 0 or (0 <= semi < eq):
            end = n if semi < 0 else semi
            out.append(Attribute(dsn[i:end].strip(), ""))
            i = end + 1
            continue
        key = dsn[i:eq].strip()
        start = eq + 1
        k = start
        while k < n and dsn[k] in " \t":
            k += 1
        if k < n and dsn[k] == "{":
            m = k + 1
            while True:
                close = dsn.find("}", m)
                if close < 0:  # unterminated: everything up to the end belongs to this value
                    out.append(Attribute(key, dsn[start:], terminated=False))
                    return out
                if close + 1 < n and dsn[close + 1] == "}":
                    m = close + 2
                    continue
                break
            semi = dsn.find(";", close + 1)
            end = n if semi < 0 else semi
            out.append(Attribute(key, dsn[start:end]))
            i = end + 1
        else:
            end = n if semi < 0 else semi
            out.append(Attribute(key, dsn[start:end]))
            i = end + 1
    return out


def value_of(attr: Attribute) -> str:
    """The attribute's value with the braces and the `}}` escapes removed."""
    raw = attr.raw.strip()
    if raw.startswith("{") and raw.endswith("}") and attr.terminated:
        return raw[1:-1].replace("}}", "}")
    return raw


def is_secret(key: str) -> bool:
    lowered = key.lower().replace(" ", "")
    return any(s in lowered for s in _SECRET_KEYS)


def redact_dsn(dsn: str) -> str:
    """The DSN with the value of every secret attribute replaced by ***, for messages and logs."""
    parts = []
    for attr in tokenize(dsn):
        if not attr.raw and "=" not in attr.key and not is_secret(attr.key):
            parts.append(attr.key)
        elif is_secret(attr.key) or not attr.terminated:
            parts.append(f"{attr.key}=***")
        else:
            parts.append(f"{attr.key}={attr.raw}")
    return ";".join(parts)


def quote_odbc_value(value: str) -> str:
    """`value` ready to stand after `key=` in a connection string: brace-quoted by ODBC's rules when it contains
    `;`, `{`, `}` or `=`, or starts or ends with a blank; unchanged otherwise."""
    needs = any(c in value for c in ";{}=") or value != value.strip()
    if not needs:
        return value
    return "{" + value.replace("}", "}}") + "}"


def with_attribute(dsn: str, key: str, value: str) -> str:
    """The DSN with `key=value` appended unless an attribute of that name (any case) is already present."""
    if any(a.key.lower() == key.lower() for a in tokenize(dsn)):
        return dsn
    return dsn.rstrip(";") + f";{key}={quote_odbc_value(value)}"
