"""Typed failures of the lease store. A compare-and-set miss is not one of them: it is a normal result."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the lease store raises; the message is one line meant for an operator."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or did not answer within the caller's deadline."""


class StoreAuthError(StoreError):
    """The database refused the credentials in the DSN."""


class StoreConfigError(StoreError):
    """The connection settings cannot work (unknown dialect or DBMS, missing ODBC driver, bad DSN)."""


class SchemaMissing(StoreError):
    """The fos tables are absent or too old: run `fos init-db`."""


class InvalidName(StoreError, ValueError):
    """A cluster or node name that fos refuses to store."""


class ProtocolViolation(StoreError):
    """The database answered in a way that makes a compare-and-set impossible to judge (e.g. NOCOUNT on)."""


class UnsafeSchema(StoreConfigError):
    """The fos tables are in place but something on them would make a compare-and-set impossible to judge
    (e.g. an enabled trigger on fos_lease, whose own row counts can replace the UPDATE's)."""
