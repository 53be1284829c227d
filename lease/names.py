"""Validation of the names fos writes into the database.

Every statement is parameterised, so a hostile name cannot change SQL; the names are still restricted so that
what a DBA reads in the tables is what an operator typed in the config, and so that they fit the columns.
"""

from __future__ import annotations

import re

from .errors import InvalidName

MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(
            f"{kind} name {value!r} is not allowed: use 1-{MAX_NAME} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value
