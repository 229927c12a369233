"""``runstream top --once --json`` against a running API and worker: every process with
its connections by purpose against the budget, runs, streams, and what is wrong."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis
from rich.console import Console

from runstream.cli.top import ProcessRow, Snapshot, render
from tests.api.streaming import start
from tests.cli import cli_env, run_cli
from tests.redis_server import RedisServer
from tests.system import Api

pytestmark = pytest.mark.usefixtures("worker")


async def snapshot(redis_url: str, *args: str) -> dict[str, Any]:
    env = cli_env(RUNSTREAM_REDIS_URL=redis_url, RUNSTREAM_INSTANCE="topper")
    result = await asyncio.to_thread(run_cli, "top", "--once", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = orjson.loads(result.stdout)
    return value


def process(snap: dict[str, Any], role: str, instance: str) -> dict[str, Any]:
    found = [p for p in snap["processes"] if (p["role"], p["instance"]) == (role, instance)]
    assert len(found) == 1, snap["processes"]
    return found[0]


async def test_top_shows_every_process_its_runs_and_its_streams(
    redis_url: str, api: Api, client: httpx.AsyncClient
) -> None:
    run_id = await start(client, "scripted", count=1, hang=True)
    async with client.stream("GET", f"/runs/{run_id}/stream") as stream:
        chunks = stream.aiter_bytes()  # held: a dropped iterator would close the stream
        await anext(chunks)  # one stream open
        snap = await snapshot(redis_url, "--metrics", api.url)
        await chunks.aclose()
    assert snap["budget"] == {"cmd": 8, "pubsub": 1, "queue": 4}
    api_row = process(snap, "api", "api1")
    assert api_row["connections"]["pubsub"] == 1
    assert "queue" not in api_row["connections"]  # it enqueues over its command pool
    assert api_row["over_budget"] == [] and api_row["streams"] == 1
    worker_row = process(snap, "worker", "wk1")
    assert worker_row["connections"]["pubsub"] == 1 and worker_row["over_budget"] == []
    assert process(snap, "cli", "topper")["connections"] == {"top": 1}  # its one connection
    assert snap["runs"] == {"active": 1, "running": 1}
    assert snap["unnamed_connections"] == 0
    await client.post(f"/runs/{run_id}/stop")


async def test_top_flags_processes_over_budget_and_unnamed_connections(
    redis_url: str, redis_server: RedisServer
) -> None:
    extra = [redis.Redis(port=redis_server.port, client_name="runstream:api:leaky:pubsub")]
    extra.append(redis.Redis(port=redis_server.port, client_name="runstream:api:leaky:pubsub"))
    extra.append(redis.Redis(port=redis_server.port))  # no name at all
    try:
        for connection in extra:
            connection.ping()
        snap = await snapshot(redis_url)
    finally:
        for connection in extra:
            connection.close()
    assert process(snap, "api", "leaky")["over_budget"] == ["pubsub"]
    assert snap["unnamed_connections"] >= 1


def test_the_live_view_shows_the_busiest_nodes_count_against_the_budget() -> None:
    row = ProcessRow(
        "api",
        "api1",
        {"cmd": 16, "pubsub": 2},
        [],
        per_node={"n1:1": {"cmd": 8, "pubsub": 1}, "n2:2": {"cmd": 8, "pubsub": 1}},
    )
    budget = {"cmd": 8, "pubsub": 1, "queue": 4}
    nodes = {"n1:1": "master", "n2:2": "master"}
    snap = Snapshot(datetime.now(UTC), [row], 0, 0, 0, budget, nodes=nodes)
    console = Console(width=200, record=True)
    console.print(render(snap))
    text = console.export_text()
    assert "8/8" in text and "1/1" in text and "16/8" not in text
    assert "on 2 nodes" in text
