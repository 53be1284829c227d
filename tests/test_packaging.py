"""The production install path of docs/install.md: fos's wheel holds the three packages and nothing else, installs
into a brand-new venv from binary wheels only (so a node needs no compiler), and `fos` runs from there without
the database password. pip may fetch the dependencies from the configured index (PyPI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "lease", "netops")
NOT_SHIPPED = ("tests/", "bench/", "examples/", "docker/", "scripts/", "docs/")
TEST_ONLY = ("pytest", "pytest-asyncio", "sqlglot", "mypy", "ruff", "pyyaml")


def _run(argv: Sequence[str | Path], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command outside the checkout (so nothing is imported from it); fail with its output."""
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env, cwd="/", check=False
    )
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: no venv, no PYTHONPATH, no database password."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "FOS_DB_PASSWORD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fos built with `pip wheel --no-deps` from a copy of the source tree (the build leaves files in its tree)."""
    src = tmp_path_factory.mktemp("src") / "fos"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".github"
        ),
    )
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src], timeout=300)
    wheels = sorted(out.glob("fos-*.whl"))
    assert len(wheels) == 1, f"expected one fos wheel, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A brand-new venv with the wheel installed; every dependency must come as a binary wheel (no compiler)."""
    path = tmp_path_factory.mktemp("venv") / "fos"
    _run([sys.executable, "-m", "venv", path], timeout=120, env=_clean_env())
    _run(
        [path / "bin" / "python", "-m", "pip", "install", "-q", "--only-binary", ":all:", wheel],
        timeout=600,
        env=_clean_env(),
    )
    return path


def _version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_the_wheel_holds_every_module_of_agent_lease_and_netops(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert {"agent/keeper.py", "agent/cli.py", "lease/store.py", "netops/binder.py"} <= source
    assert source - names == set(), "modules missing from the wheel"


def test_the_wheel_ships_no_tests_benchmarks_or_examples(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith(NOT_SHIPPED)] == []
    top = {n.split("/", 1)[0] for n in names if not n.startswith("fos-")}
    assert top == set(PACKAGES)


def test_the_wheel_declares_the_fos_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"fos-{_version()}.dist-info/entry_points.txt").decode()
    assert "fos = agent.cli:main" in entry_points


def test_fos_runs_from_the_fresh_venv_and_reports_the_project_version(venv: Path) -> None:
    out = _run([venv / "bin" / "fos", "--version"], timeout=60, env=_clean_env())
    assert out.strip() == f"fos {_version()}"


def test_config_check_passes_in_the_fresh_venv_without_the_database_password(venv: Path) -> None:
    out = _run(
        [venv / "bin" / "fos", "config", "check", "--config", ROOT / "examples" / "fos.toml"],
        timeout=60,
        env=_clean_env(),
    )
    assert "ok (cluster helpdesk" in out
    assert "${FOS_DB_PASSWORD} is not set here" in out


def test_the_fresh_venv_imports_fos_and_pyodbc_from_its_own_site_packages(venv: Path) -> None:
    modules = "agent, lease, netops, pyodbc"
    code = f"import json, {modules}; print(json.dumps([m.__file__ for m in ({modules})]))"
    files = json.loads(_run([venv / "bin" / "python", "-c", code], timeout=60, env=_clean_env()))
    site = str(venv / "lib")
    assert all(f.startswith(site) for f in files), files


def test_the_fresh_venv_holds_the_runtime_dependencies_and_no_test_tools(venv: Path) -> None:
    listing = _run([venv / "bin" / "python", "-m", "pip", "list", "--format=json"], timeout=60, env=_clean_env())
    installed = {canonicalize_name(d["name"]) for d in json.loads(listing)}
    with open(ROOT / "pyproject.toml", "rb") as f:
        runtime = {canonicalize_name(Requirement(d).name) for d in tomllib.load(f)["project"]["dependencies"]}
    assert runtime <= installed
    assert installed & set(TEST_ONLY) == set()
