"""An API and a worker per test, on the private redis-server and a fresh SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.system import Api, Worker, make_settings, running_api, running_worker


@pytest.fixture(autouse=True)
async def no_connection_leaks(redis_server: RedisServer) -> AsyncIterator[None]:
    """After the API and worker of a test are gone, no runstream connection is left."""
    yield
    if redis_server.process is None or redis_server.process.poll() is not None:
        return  # the test stopped the server: there is nothing left to count
    await wait_until(lambda: redis_server.client_names() == [], timeout=10)


@pytest.fixture
async def api(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    async with running_api(make_settings(redis_url, sqlite_url, instance="api1")) as api:
        yield api


@pytest.fixture
async def worker(redis_url: str, sqlite_url: str) -> AsyncIterator[Worker]:
    async with running_worker(make_settings(redis_url, sqlite_url, instance="wk1")) as worker:
        yield worker


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client() as client:
        yield client
