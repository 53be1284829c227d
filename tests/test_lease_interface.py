"""The interfaces are importable without a database driver, and both stores implement them."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from lease.interface import ControlStore, HistoryStore, LeaseStore
from lease.memory import MemoryLeaseStore


def test_the_pure_modules_load_no_driver() -> None:
    code = (
        "import sys, lease, lease.model, lease.interface, lease.memory, lease.dsn, agent.roles\n"
        "from lease import LeaseState, LeaseStore, redact_dsn\n"
        "loaded = [m for m in ('pyodbc', 'aioodbc') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from lease import SqlLeaseStore\n"
        "assert 'pyodbc' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("protocol", [LeaseStore, HistoryStore, ControlStore])
def test_every_interface_method_has_a_contract_docstring(protocol: type) -> None:
    methods = [n for n, f in vars(protocol).items() if inspect.iscoroutinefunction(f)]
    assert methods
    for name in methods:
        assert (inspect.getdoc(getattr(protocol, name)) or "").strip(), f"{protocol.__name__}.{name} has no contract"


@pytest.mark.parametrize("protocol", [LeaseStore, HistoryStore, ControlStore])
def test_both_stores_take_the_interface_keywords(protocol: type) -> None:
    from lease import SqlLeaseStore

    for name, f in vars(protocol).items():
        if not inspect.iscoroutinefunction(f):
            continue
        wanted = set(inspect.signature(f).parameters)
        for impl in (SqlLeaseStore, MemoryLeaseStore):
            have = set(inspect.signature(getattr(impl, name)).parameters)
            assert wanted <= have, f"{impl.__name__}.{name} lacks {wanted - have}"
