"""examples/grafana-dashboard.json queries only metrics that an agent's /metrics really exposes, and covers the
ones the issue names (role, epoch, lease seconds left, renew latency and failures, transitions, app health, IP)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.http import make_app
from agent.roles import Role
from lease.memory import MemoryLeaseStore
from tests.support.agents import Node, boottime, config, until

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"


def queried_metrics() -> set[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return {m for e in exprs for m in re.findall(r"\b(fos_[a-z_]+)", e)}


@pytest.fixture
async def metrics_text() -> AsyncIterator[str]:
    node = Node(config(ttl=3, heartbeat=0.5), "m1", MemoryLeaseStore(clock=boottime)).start()
    await until(lambda: node.agent.role is Role.ACTIVE)
    await until(lambda: node.agent.metrics.renew_latency._sum.get() > 0, 3, "a renewal")
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(node.agent)))
    await client.start_server()
    yield await (await client.get("/metrics")).text()
    await client.close()
    await node.kill()


async def test_every_metric_the_dashboard_queries_exists_in_metrics(metrics_text: str) -> None:
    exposed = {line.split("{")[0].split()[0] for line in metrics_text.splitlines() if line and not line.startswith("#")}
    missing = queried_metrics() - exposed
    assert not missing, f"the dashboard queries metrics no agent exposes: {sorted(missing)}"


def test_the_dashboard_covers_role_epoch_lease_renewals_transitions_app_and_ip() -> None:
    wanted = {
        "fos_role",
        "fos_epoch",
        "fos_lease_seconds_left",
        "fos_renew_latency_seconds_bucket",
        "fos_renew_failures_total",
        "fos_transitions_total",
        "fos_app_healthy",
        "fos_ip_bound",
    }
    assert wanted <= queried_metrics()
