"""runstream inside an existing FastAPI application: mounted under a prefix, started by
the parent's own lifespan, next to the parent's own routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from runstream.api.app import create_app, runstream_lifespan
from runstream.config import Settings
from tests.api.checks import assert_error
from tests.api.streaming import read_stream
from tests.system import make_settings, serving

pytestmark = pytest.mark.usefixtures("worker")


def parent_app(settings: Settings) -> tuple[FastAPI, list[str]]:
    """A product's own app, as the docs tell its authors to write it."""
    runstream_app = create_app(settings)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with runstream_lifespan(runstream_app):
            events.append("parent started")
            yield {"greeting": "hello"}
            events.append("parent stopping")

    parent = FastAPI(lifespan=lifespan)

    @parent.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    parent.mount("/runstream", runstream_app)
    return parent, events


async def test_runstream_mounted_under_a_prefix_serves_runs_and_streams(
    redis_url: str, sqlite_url: str
) -> None:
    parent, events = parent_app(make_settings(redis_url, sqlite_url, instance="embedded"))
    async with serving(parent) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/hello")).json() == {"hello": "world"}
        created = await client.post(
            "/runstream/runs", json={"agent": "echo", "input": {"text": "a b"}}
        )
        assert created.status_code == 201
        run_id = created.json()["id"]
        assert created.headers["location"] == f"/runstream/runs/{run_id}"
        async with httpx.AsyncClient(base_url=f"{url}/runstream") as agents:
            streamed = await read_stream(agents, run_id)
        assert [e["event"] for e in streamed] == ["status", "token", "token", "status"]
        assert (await client.get(f"/runstream/runs/{run_id}")).json()["status"] == "completed"
        assert (await client.get("/runstream/healthz")).status_code == 200
        assert_error(await client.get("/runstream/runs/nope"), 404, "not_found")
    assert events == ["parent started", "parent stopping"]


async def test_a_mounted_app_that_was_not_started_says_how_to_start_it(
    redis_url: str, sqlite_url: str
) -> None:
    parent = FastAPI()
    parent.mount("/runstream", create_app(make_settings(redis_url, sqlite_url)))
    async with serving(parent) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/runstream/runs")
    assert_error(response, 503, "not_started")
    assert "runstream_lifespan" in response.json()["error"]["message"]
