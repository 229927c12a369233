"""Reading a run's SSE stream in tests, with httpx-sse."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse


async def read_stream(
    client: httpx.AsyncClient,
    run_id: str,
    *,
    last_event_id: int | None = None,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Every SSE message of the stream until the server closes it, as dicts with id/event/data."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    params = {} if after is None else {"after": after}
    events: list[dict[str, Any]] = []
    async with aconnect_sse(
        client, "GET", f"/runs/{run_id}/stream", headers=headers, params=params
    ) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # httpx-sse reports a heartbeat comment as an empty event
            events.append({"id": sse.id, "event": sse.event, "data": orjson.loads(sse.data)})
    return events


async def read_first(
    client: httpx.AsyncClient, run_id: str, n: int, *, got_one: asyncio.Event | None = None
) -> list[dict[str, Any]]:
    """Read ``n`` events of the stream, then leave (the client goes away mid-stream)."""
    events: list[dict[str, Any]] = []
    async with (
        aconnect_sse(client, "GET", f"/runs/{run_id}/stream") as source,
        contextlib.aclosing(source.aiter_sse()) as messages,
    ):
        async for sse in messages:
            if not sse.data:
                continue  # a heartbeat
            events.append({"id": sse.id, "event": sse.event, "data": orjson.loads(sse.data)})
            if got_one is not None:
                got_one.set()
            if len(events) >= n:
                break
    return events


async def start(client: httpx.AsyncClient, agent: str, **input: Any) -> str:
    response = await client.post("/runs", json={"agent": agent, "input": input})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id
