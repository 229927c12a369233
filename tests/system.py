"""The whole system in the test's event loop: a real uvicorn API and a real worker.

Both talk to the session's private redis-server and a real database; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from runstream.api.app import close_streams, create_app
from runstream.config import Settings, load_settings
from runstream.resources import Resources
from runstream.worker.executor import Executor
from runstream.worker.process import run_worker
from tests.redis_server import free_port

FAST = {
    "heartbeat_s": 1.0,
    "stop_grace_s": 1.0,
    "shutdown_grace_s": 2.0,
    "worker_lost_s": 3.0,
    "pubsub_ping_s": 1.0,
}


def make_settings(redis_url: str, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {**FAST, "redis_url": redis_url, "database_url": database_url}
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Worker:
    """A worker running in the test's loop; stop it to shut it down gracefully."""

    settings: Settings
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    resources: Resources | None = None
    executor: Executor | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def _on_ready(self, resources: Resources, executor: Executor) -> None:
        self.resources, self.executor = resources, executor
        self.ready.set()

    async def stop(self) -> None:
        self.shutdown.set()
        if self.task is not None:
            await self.task


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = Worker(settings)
    async with asyncio.TaskGroup() as tg:
        worker.task = tg.create_task(run_worker(settings, worker.shutdown, worker._on_ready))
        try:
            async with asyncio.timeout(15):
                await _first_done(worker.ready.wait(), worker.task)
            yield worker
        finally:
            worker.shutdown.set()


async def _first_done(wait: Coroutine[Any, Any, Any], task: asyncio.Task[None]) -> None:
    """Wait for ``wait`` unless ``task`` ends first (then raise what ended it)."""
    waiter = asyncio.ensure_future(wait)
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done() and not waiter.done():
        task.result()
        raise RuntimeError("the worker stopped before it was ready")


@dataclass
class Api:
    settings: Settings
    url: str
    server: uvicorn.Server

    @property
    def resources(self) -> Resources:
        """The API process's resources (set by its lifespan)."""
        app: Any = self.server.config.app
        resources: Resources = app.state.api.resources
        return resources

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=15, **kwargs)


@contextlib.asynccontextmanager
async def running_server(app: Any) -> AsyncIterator[uvicorn.Server]:
    """A real uvicorn serving ``app`` on a free loopback port, in this loop."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
            yield server
        finally:
            server.should_exit = True


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve any ASGI ``app`` for the block; yields its base URL."""
    async with running_server(app) as server:
        yield f"http://127.0.0.1:{server.config.port}"


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with running_server(app) as server:
        try:
            yield Api(settings, f"http://127.0.0.1:{server.config.port}", server)
        finally:
            close_streams(app)  # as runstream's own server does when it starts shutting down
