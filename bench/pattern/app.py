"""The pattern's API: runs, and the per-stream two-PubSub SSE endpoint of the original.

The stream endpoint follows the original's order on purpose: read the list, check the
record, *then* subscribe (the original's window between the two is part of the pattern).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bench.pattern.common import (
    QUEUE_KEY,
    STREAM_END_SIGNALS,
    TERMINAL,
    Settings,
    control_channel,
    redis_client,
    response_channel,
    responses_key,
)
from bench.pattern.store import Store


class CreateRun(BaseModel):
    """``POST /runs`` body, as runstream's."""

    agent: str = "scripted"
    input: dict[str, Any] = Field(default_factory=dict)


class Backend:
    """The process's pools and store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Redis = redis_client(settings, "api", "cmd")
        self.pubsub_redis: Redis = redis_client(settings, "api", "pubsub")
        self.store = Store(settings.database_url)

    async def aclose(self) -> None:
        """Close both pools and the engine."""
        await self.redis.aclose()
        await self.pubsub_redis.aclose()
        await self.store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app; its lifespan owns the backend."""
    settings = settings or Settings.from_env()
    backend = Backend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.store.create_schema()
        try:
            yield
        finally:
            await backend.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        await backend.redis.ping()
        await backend.store.ping()
        return {"status": "ok"}

    @app.post("/runs", status_code=201)
    async def create_run(body: CreateRun) -> dict[str, Any]:
        run_id = str(uuid.uuid4())
        run = await backend.store.insert(run_id, body.agent, body.input)
        job = orjson.dumps({"id": run_id, "input": body.input}).decode()
        await backend.redis.lpush(QUEUE_KEY, job)
        return run

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await backend.store.get(run_id)
        if run is None:
            raise HTTPException(404, "run not found")
        return run

    @app.get("/runs")
    async def list_runs(
        status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        limit = max(1, min(limit, 100))
        offset = int(cursor or 0)
        runs = await backend.store.list_runs(status, limit, offset)
        return {"runs": runs, "next": str(offset + limit) if len(runs) == limit else None}

    @app.post("/runs/{run_id}/stop", status_code=202)
    async def stop_run(run_id: str) -> dict[str, Any]:
        run = await backend.store.get(run_id)
        if run is None:
            raise HTTPException(404, "run not found")
        if run["status"] in TERMINAL:
            raise HTTPException(409, "run already ended")
        await backend.redis.publish(control_channel(run_id), "STOP")
        return run

    @app.get("/runs/{run_id}/stream")
    async def stream_run(run_id: str) -> StreamingResponse:
        if await backend.store.get(run_id) is None:
            raise HTTPException(404, "run not found")
        return StreamingResponse(
            _stream(backend, run_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _text(value: bytes | str) -> str:
    """A reply of the ``decode_responses`` client (typed as bytes or str)."""
    return value if isinstance(value, str) else value.decode()


def _frame(response: str) -> tuple[str, bool]:
    """One SSE message for a stored response, and whether it is the terminal event."""
    event = json.loads(response)  # the original decoded every response for every reader
    kind = event.get("type", "message")
    terminal = kind == "status" and event.get("status") in TERMINAL
    return f"id: {event.get('seq', '')}\nevent: {kind}\ndata: {response}\n\n", terminal


async def _stream(backend: Backend, run_id: str) -> AsyncIterator[str]:
    """The original's stream: LRANGE, status check, two PubSubs, LRANGE per notification."""
    redis, key = backend.redis, responses_key(run_id)
    last_index = -1
    for response in await redis.lrange(key, 0, -1):
        text, terminal = _frame(_text(response))
        last_index += 1
        yield text
        if terminal:
            return
    run = await backend.store.get(run_id)
    if run is None or run["status"] != "running":
        status = run["status"] if run else "failed"
        seq = last_index + 2
        yield (
            f"id: {seq}\nevent: status\ndata: "
            + json.dumps({"type": "status", "status": status, "seq": seq})
            + "\n\n"
        )
        return
    responses_channel, control = response_channel(run_id), control_channel(run_id)
    pubsub_response: PubSub | None = None
    pubsub_control: PubSub | None = None
    listener: asyncio.Task[None] | None = None
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        pubsub_response = backend.pubsub_redis.pubsub()
        await pubsub_response.subscribe(responses_channel)
        pubsub_control = backend.pubsub_redis.pubsub()
        await pubsub_control.subscribe(control)
        listener = asyncio.create_task(_listen(pubsub_response, pubsub_control, queue))
        while True:
            kind, _ = await queue.get()
            # Catch up on every notification; on a control message, send what arrived
            # before it, then stop.
            for response in await redis.lrange(key, last_index + 1, -1):
                last_index += 1
                text, terminal = _frame(_text(response))
                yield text
                if terminal:
                    return
            if kind == "control":
                return
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener  # fix 5: a cancelled listener is awaited
        for pubsub in (pubsub_response, pubsub_control):
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.unsubscribe()
                # Fixes 3 and 4: aclose(), in finally.
                await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _listen(
    pubsub_response: PubSub, pubsub_control: PubSub, queue: asyncio.Queue[tuple[str, str]]
) -> None:
    """The original's listener: one pending ``__anext__`` per PubSub, first one wins."""
    readers = {"response": pubsub_response.listen(), "control": pubsub_control.listen()}
    pending = {asyncio.ensure_future(anext(it)): name for name, it in readers.items()}
    try:
        while True:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = pending.pop(task)
                message = task.result()
                if message and message.get("type") == "message":
                    data = message.get("data")
                    if name == "response" and data == "new":
                        await queue.put(("new", data))
                    elif name == "control" and data in STREAM_END_SIGNALS:
                        await queue.put(("control", data))
                        return
                pending[asyncio.ensure_future(anext(readers[name]))] = name
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
