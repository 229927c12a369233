"""The alert rules and the dashboard in ops/ name only metrics runstream exposes."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from tests.system import Api

OPS = Path(__file__).parents[1] / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "runstream.json"
METRIC = re.compile(r"\brunstream_[a-z_]+\b")

pytestmark = pytest.mark.usefixtures("worker")  # the worker's gauges are in this process too


def exposed(text: str) -> set[str]:
    """Every metric name a /metrics page declares (counters with their _total samples)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE runstream_"):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
    return names


async def test_every_metric_the_alerts_and_the_dashboard_name_exists(
    api: Api, client: httpx.AsyncClient
) -> None:
    names = exposed((await client.get("/metrics")).text)
    alerts = yaml.safe_load(ALERTS.read_text())
    expressions = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in expressions for name in METRIC.findall(str(expr))}
    assert named and named <= names, sorted(named - names)
    rule_names = [rule["alert"] for group in alerts["groups"] for rule in group["rules"]]
    assert {
        "RunstreamConnectionsOverBudget",
        "RunstreamTooManyConnections",
        "RunstreamPubSubDisconnected",
        "RunstreamPubSubWatchdogOverdue",
        "RunstreamRunsStuckRunning",
    } <= set(rule_names)
