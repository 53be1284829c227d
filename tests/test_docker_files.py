"""docker/ and the CI workflow, checked without a container engine: the compose stack's structure, the addresses
around the common IP, every path the Dockerfile copies, the stack's cluster file against fos's own parser and
timing rules, the SQL Server set-up against docs/database-setup.md, and every SQL Server connection string
against README's "Database connection strings"."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from agent import config, timing

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
AGENTS = ("m1", "m2")
ENV = {"FOS_DB_USER": "fos_agent", "FOS_DB_PASSWORD": "Agent-secret-1"}


def _yaml(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(DOCKER / "compose.yaml")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return _yaml(ROOT / ".github" / "workflows" / "ci.yml")


@pytest.fixture(scope="module")
def cluster() -> config.Config:
    return config.load(str(DOCKER / "fos.toml"), env=ENV)


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mssql_setup", DOCKER / "mssql_setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DOCKER / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


# --- compose ---------------------------------------------------------------------------------------------------


def test_compose_has_the_database_init_db_two_agents_and_a_client(compose: dict[str, Any]) -> None:
    assert {"db", "init-db", "m1", "m2", "client"} <= set(compose["services"])


def test_the_database_is_sql_server_2022_from_microsoft_with_the_password_from_the_env_file(
    compose: dict[str, Any],
) -> None:
    db = compose["services"]["db"]
    assert db["image"] == "mcr.microsoft.com/mssql/server:2022-latest"
    assert db["environment"]["ACCEPT_EULA"] == "Y"
    assert db["environment"]["MSSQL_SA_PASSWORD"].startswith("${MSSQL_SA_PASSWORD")
    assert "/opt/mssql-tools18/bin/sqlcmd" in " ".join(db["healthcheck"]["test"])


@pytest.mark.parametrize("name", AGENTS)
def test_agents_have_net_admin_and_net_raw_as_root_after_init_db(compose: dict[str, Any], name: str) -> None:
    agent = compose["services"][name]
    assert {"NET_ADMIN", "NET_RAW"} <= set(agent["cap_add"])
    # Docker hands cap_add only to uid 0: a non-root agent would have neither capability.
    assert str(agent["user"]) in ("root", "0")
    assert agent["depends_on"]["init-db"]["condition"] == "service_completed_successfully"
    assert agent["hostname"] == name
    assert agent["environment"]["FOS_DB_USER"] == "fos_agent"
    assert agent["environment"]["FOS_DB_PASSWORD"].startswith("${FOS_AGENT_PASSWORD")
    assert agent["command"][0] == "run"


def test_init_db_waits_for_a_healthy_database(compose: dict[str, Any]) -> None:
    assert compose["services"]["init-db"]["depends_on"]["db"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", AGENTS)
def test_agents_stop_grace_outlasts_the_application_stop(
    compose: dict[str, Any], cluster: config.Config, name: str
) -> None:
    grace = compose["services"][name]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) >= cluster.app.stop_timeout + 10


def test_the_common_ip_is_in_the_fixed_subnet_and_never_handed_out(
    compose: dict[str, Any], cluster: config.Config
) -> None:
    assert cluster.common_ip is not None
    common = ipaddress.ip_interface(str(cluster.common_ip))
    services = compose["services"]
    (net_name,) = set(services["m1"]["networks"])
    assert set(services["m2"]["networks"]) == {net_name}
    (pool,) = compose["networks"][net_name]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    assert common.ip in subnet and common.network == subnet
    assert common.ip not in ipaddress.ip_network(pool["ip_range"])
    assert str(common.ip) != pool["gateway"]
    static = [ipaddress.ip_address(s["networks"][net_name]["ipv4_address"]) for s in services.values()]
    assert all(a in subnet for a in static)
    assert common.ip not in static
    assert len(set(static)) == len(static)


def test_the_agents_are_the_clusters_nodes_on_eth0(compose: dict[str, Any], cluster: config.Config) -> None:
    assert sorted(n.name for n in cluster.nodes) == sorted(compose["services"][a]["hostname"] for a in AGENTS)
    assert {n.interface for n in cluster.nodes} == {"eth0"}


def test_the_client_asks_the_common_ip(compose: dict[str, Any], cluster: config.Config) -> None:
    assert cluster.common_ip is not None
    ip = str(ipaddress.ip_interface(str(cluster.common_ip)).ip)
    assert f"http://{ip}:8080/" in compose["services"]["client"]["command"]
    client_py = (DOCKER / "client.py").read_text()
    assert f"http://{ip}:8080/" in client_py


def test_every_variable_compose_requires_is_in_env_example(compose: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{(\w+):\?", (DOCKER / "compose.yaml").read_text()))
    example = {ln.split("=", 1)[0] for ln in (DOCKER / "env.example").read_text().splitlines() if "=" in ln}
    assert required and required <= example


def test_compose_bind_mounts_and_build_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file()


# --- Dockerfile ------------------------------------------------------------------------------------------------


def test_every_path_the_dockerfile_copies_from_the_context_exists() -> None:
    copies = [args for word, args in _dockerfile_instructions() if word == "COPY"]
    from_context = [shlex.split(a) for a in copies if not a.startswith("--from")]
    assert from_context
    for argv in from_context:
        for source in argv[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"


def test_the_image_copies_every_file_the_stack_runs_from_opt_fos_share(
    compose: dict[str, Any], cluster: config.Config
) -> None:
    shipped = {
        "/opt/fos/share/" + Path(src).name
        for word, args in _final_stage()
        if word == "COPY" and not args.startswith("--from")
        for src in shlex.split(args)[:-1]
    }
    used = set(re.findall(r"/opt/fos/share/[\w.-]+", str(cluster.app.command)))
    for service in compose["services"].values():
        used |= {p for p in service.get("entrypoint", []) if p.startswith("/opt/fos/share/")}
    assert used and used <= shipped


def test_the_runtime_image_is_debian_slim_without_a_compiler_with_freetds_and_user_fos() -> None:
    stage = _final_stage()
    assert stage[0] == ("FROM", "debian:bookworm-slim")
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert not re.search(r"\b(gcc|python3-dev|unixodbc-dev|build-essential)\b", runs)
    for package in ("unixodbc", "tdsodbc", "odbc-postgresql", "odbc-mariadb", "libsqliteodbc"):
        assert re.search(rf"\b{package}\b", runs)
    assert re.search(r"useradd\b[^&]*\bfos\b", runs)
    assert ("USER", "fos") in stage


def test_msodbcsql18_is_an_opt_in_build_argument_that_accepts_the_eula() -> None:
    stage = _final_stage()
    assert ("ARG", "MSODBC=0") in stage
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert 'if [ "$MSODBC" = "1" ]' in runs
    assert "ACCEPT_EULA=Y apt-get install" in runs and "msodbcsql18" in runs
    assert "https://packages.microsoft.com/keys/microsoft.asc" in runs
    assert "https://packages.microsoft.com/debian/12/prod bookworm main" in runs


# --- the stack's cluster file and SQL Server set-up -------------------------------------------------------------


def test_the_stacks_cluster_file_parses_and_passes_the_timing_rules(cluster: config.Config) -> None:
    timing.check(cluster)
    assert cluster.database.dialect == "mssql"
    assert "${FOS_DB_PASSWORD}" not in cluster.database.dsn
    assert cluster.app.user == "fos"


def test_the_stacks_cluster_file_needs_the_password_from_the_environment() -> None:
    with pytest.raises(config.ConfigError, match=r"FOS_DB_PASSWORD"):
        config.load(str(DOCKER / "fos.toml"), env={"FOS_DB_USER": "fos_agent"})


def _doc_section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_the_setup_script_runs_the_sql_server_statements_of_database_setup_md() -> None:
    section = _doc_section(ROOT / "docs" / "database-setup.md", "## SQL Server")
    documented = [
        ln.strip().rstrip(";")
        for ln in section.splitlines()
        if ln.strip().startswith(("GRANT ", "ALTER ROLE ", "CREATE USER "))
    ]
    setup = _setup_module()
    statements = " | ".join(setup.login_statements("o", "a") + setup.GRANT_STATEMENTS)
    assert len(documented) >= 9
    for sql in documented:
        assert sql in statements, f"docs/database-setup.md has {sql!r}, docker/mssql_setup.py does not"


# --- the workflow ----------------------------------------------------------------------------------------------


def _steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_the_workflow_runs_on_push_and_pull_requests(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)


def test_the_lint_job_runs_ruff_ruff_format_and_mypy(workflow: dict[str, Any]) -> None:
    text = _steps_text(workflow["jobs"]["lint"])
    assert "ruff check agent lease netops tests bench examples" in text
    assert "ruff format --check agent lease netops tests bench examples" in text
    assert re.search(r"^mypy\b", text, re.M)


def test_the_test_job_runs_the_whole_suite_as_root_keeping_ci(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["test"]
    assert job["runs-on"].startswith("ubuntu")
    assert re.search(r"sudo --preserve-env=CI make test\b", _steps_text(job))


def test_the_mssql_job_runs_the_lease_tests_on_sql_server_2022_with_both_drivers(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["mssql"]
    assert job["strategy"]["matrix"]["driver"] == ["freetds", "msodbcsql18"]
    assert {i["driver"] for i in job["strategy"]["matrix"]["include"]} == {"freetds", "msodbcsql18"}
    (service,) = job["services"].values()
    assert service["image"] == "mcr.microsoft.com/mssql/server:2022-latest"
    assert service["env"]["ACCEPT_EULA"] == "Y"
    tests = [s for s in job["steps"] if "pytest tests/test_lease_*.py" in str(s.get("run", ""))]
    assert len(tests) == 1 and tests[0]["env"]["FOS_TEST_MSSQL_DSN"] == "${{ matrix.dsn }}"
    text = _steps_text(job)
    assert "mssql_setup.py logins" in text and "--wait" in text
    assert "ACCEPT_EULA=Y apt-get install" in text and "msodbcsql18" in text


# --- connection strings ----------------------------------------------------------------------------------------


def _parts(dsn: str) -> dict[str, str]:
    out = {}
    for part in dsn.split(";"):
        if part:
            key, _, value = part.partition("=")
            out[key.strip().lower()] = value.strip()
    return out


def _readme_sql_server_dsns() -> dict[str, dict[str, str]]:
    """Driver name (without braces) -> the keys and values README documents for it."""
    section = _doc_section(ROOT / "README.md", "### Database connection strings (ODBC)")
    found = [_parts(ln.strip()) for ln in section.splitlines() if ln.startswith("    Driver=")]
    return {p["driver"].strip("{}"): p for p in found if "SQL Server" in p["driver"] or p["driver"] == "FreeTDS"}


def _sql_server_dsns_in_docker_and_ci(workflow: dict[str, Any]) -> list[str]:
    dsns = [str(i["dsn"]) for i in workflow["jobs"]["mssql"]["strategy"]["matrix"]["include"]]
    for line in (DOCKER / "fos.toml").read_text().splitlines():
        m = re.match(r'#?\s*dsn\s*=\s*"(.*)"', line.strip())
        if m:
            dsns.append(m.group(1))
    dsns += re.findall(r"FOS_TEST_MSSQL_DSN='([^']*)'", (DOCKER / "README.md").read_text())
    setup = _setup_module()
    dsns += [setup.sa_dsn(driver, "db", 1433, "pw") for driver in setup.DRIVERS]
    return dsns


def test_every_sql_server_dsn_in_docker_and_ci_uses_a_driver_and_keys_readme_documents(
    workflow: dict[str, Any],
) -> None:
    documented = _readme_sql_server_dsns()
    assert set(documented) == {"FreeTDS", "ODBC Driver 18 for SQL Server"}
    dsns = _sql_server_dsns_in_docker_and_ci(workflow)
    assert len(dsns) >= 8
    used = set()
    for dsn in dsns:
        parts = _parts(dsn)
        driver = parts["driver"].strip("{}")
        assert driver in documented, f"{dsn}: driver {driver!r} is not in README"
        used.add(driver)
        readme = documented[driver]
        # TrustServerCertificate: README's "trust the server certificate only on a private network".
        unknown = set(parts) - set(readme) - {"trustservercertificate"}
        assert not unknown, f"{dsn}: keys {unknown} are not in README's {driver} example"
        if driver == "FreeTDS":
            assert parts["tds_version"] == readme["tds_version"]
        else:
            assert parts["driver"] == readme["driver"] == "{ODBC Driver 18 for SQL Server}"
            assert parts["encrypt"] == readme["encrypt"] == "yes"
    assert used == set(documented)


@pytest.mark.parametrize(
    ("password", "literal", "odbc"),
    [
        ("plain-Secret1", "N'plain-Secret1'", "{plain-Secret1}"),
        ("it's;x}", "N'it''s;x}'", "{it's;x}}}"),
    ],
)
def test_the_setup_script_quotes_passwords_for_sql_and_odbc(password: str, literal: str, odbc: str) -> None:
    setup = _setup_module()
    assert setup.sql_literal(password) == literal
    assert setup.odbc_quote(password) == odbc
    assert f"Pwd={odbc};" in setup.sa_dsn("msodbcsql18", "db", 1433, password)
    assert all(literal in s for s in setup.login_statements(password, password)[:2])
