"""A run's budget (events, bytes, time), reserved event types and what an agent's
exception tells clients: each ends the run ``failed`` with a terminal event readers get."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog

from tests.api.streaming import read_first, read_stream, start
from tests.system import Api, make_settings, running_api, running_worker

AGENTS = ",".join(
    f"{name}=tests.worker.sample_agents:{name}"
    for name in ("forges_status", "forges_gap", "leaks_a_secret", "swallows_a_cancel")
)
LIMITS = {"agents": AGENTS, "max_run_events": 5, "max_run_bytes": 4096, "max_run_s": 1.0}


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    return LIMITS


pytestmark = pytest.mark.usefixtures("worker")


async def ending(
    client: httpx.AsyncClient, run_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = await read_stream(client, run_id)
    run = (await client.get(f"/runs/{run_id}")).json()
    assert events[-1]["data"]["status"] == run["status"]
    assert events[-1]["data"].get("error") == run["error"]
    return events, run


@pytest.mark.parametrize(
    ("agent_input", "setting", "kept"),
    [
        ({"count": 10}, "RUNSTREAM_MAX_RUN_EVENTS (5 events)", 5),
        ({"count": 5, "payload_bytes": 1500}, "RUNSTREAM_MAX_RUN_BYTES (4096 bytes)", 2),
        ({"count": 3, "hang": True}, "RUNSTREAM_MAX_RUN_S (1 s)", 3),
    ],
)
async def test_a_run_over_its_budget_fails_naming_the_limit(
    client: httpx.AsyncClient, agent_input: dict[str, Any], setting: str, kept: int
) -> None:
    run_id = await start(client, "scripted", **agent_input)
    events, run = await ending(client, run_id)
    assert run["status"] == "failed" and run["error"] == f"run exceeded {setting}"
    assert [e["event"] for e in events].count("tick") == kept


@pytest.mark.parametrize("agent", ["forges_status", "forges_gap"])
async def test_an_agent_that_yields_a_reserved_type_fails_its_run(
    client: httpx.AsyncClient, agent: str
) -> None:
    run_id = await start(client, agent)
    events, run = await ending(client, run_id)
    assert run["status"] == "failed" and "the system's own" in run["error"]
    assert [e["data"].get("status") for e in events if e["event"] == "status"] == [
        "running",
        "failed",
    ]
    assert all(e["event"] != "gap" for e in events)
    assert all(e["data"].get("text") != "after" for e in events)


async def test_an_agents_exception_reaches_clients_as_its_type_only(
    client: httpx.AsyncClient,
) -> None:
    with structlog.testing.capture_logs() as logs:
        run_id = await start(client, "leaks_a_secret")
        _, run = await ending(client, run_id)
    assert run["status"] == "failed"
    assert run["error"] == "ConnectionError (details in the worker log)"
    logged = [e for e in logs if e["event"] == "agent failed"]
    assert logged and "hunter2" in logged[0]["error"]  # the operator still sees it all


@pytest.fixture
async def exposing(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    # Its own queue: the module's worker (which hides agent errors) must not take the run.
    settings = {**LIMITS, "expose_agent_errors": True, "queue_name": "exposing"}
    async with (
        running_api(make_settings(redis_url, sqlite_url, instance="api-x", **settings)) as api,
        running_worker(make_settings(redis_url, sqlite_url, instance="wk-x", **settings)),
    ):
        yield api


async def test_expose_agent_errors_shows_the_full_text(exposing: Api) -> None:
    async with exposing.client() as client:
        run_id = await start(client, "leaks_a_secret")
        _, run = await ending(client, run_id)
    assert run["error"].startswith("ConnectionError: could not reach postgresql://")


@pytest.mark.parametrize(
    "agent_input",
    [
        {"count": 1_000_000, "payload_bytes": 1_000_000, "interval_ms": 3_600_000},
        {"count": 50, "payload_bytes": 1_000_000},
        {"count": 100_000, "interval_ms": 60_000},
        {"count": 1, "payload_bytes": 2_000_000},
    ],
)
async def test_scripted_inputs_are_bounded(
    client: httpx.AsyncClient, agent_input: dict[str, Any]
) -> None:
    response = await client.post("/runs", json={"agent": "scripted", "input": agent_input})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"


async def test_an_agent_that_swallows_a_cancellation_still_ends_at_its_budget(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "swallows_a_cancel")
    events, run = await ending(client, run_id)
    assert run["status"] == "failed" and run["error"] == "run exceeded RUNSTREAM_MAX_RUN_S (1 s)"
    assert [e["event"] for e in events] == ["status", "token", "status"]


async def test_an_agent_that_swallows_a_cancellation_still_stops(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "swallows_a_cancel")
    await read_first(client, run_id, 2)
    assert (await client.post(f"/runs/{run_id}/stop")).status_code == 202
    _, run = await ending(client, run_id)
    assert run["status"] in ("stopped", "failed")  # whichever of stop and budget came first
