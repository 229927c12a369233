"""Fixtures of a whole system for the test packages that start one (tests/api, tests/worker).

A module changes the system's settings by overriding ``system_overrides``. The leak
check is the same everywhere: after the test's API and worker are gone, no runstream
connection is left on the server and no task is left in the loop (DESIGN.md I1, I3).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_tasks_gone, wait_until
from tests.redis_server import RedisServer
from tests.system import Api, Worker, make_settings, running_api, running_worker


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    """Settings the module's API and worker run with (override in a test module)."""
    return {}


@pytest.fixture
async def no_system_leaks(redis_server: RedisServer) -> AsyncIterator[None]:
    """Fail the test if it leaves a runstream connection or a task behind."""
    before = set(asyncio.all_tasks())
    yield
    await wait_tasks_gone(before)
    if redis_server.process is None or redis_server.process.poll() is not None:
        return  # the test stopped the server: there is no connection left to count
    try:
        await wait_until(lambda: redis_server.client_names() == [], timeout=10)
    except AssertionError:
        raise AssertionError(f"connections left: {redis_server.client_names()}") from None


@pytest.fixture
async def api(
    redis_url: str, sqlite_url: str, system_overrides: dict[str, Any]
) -> AsyncIterator[Api]:
    settings = make_settings(redis_url, sqlite_url, instance="api1", **system_overrides)
    async with running_api(settings) as api:
        yield api


@pytest.fixture
async def worker(
    redis_url: str, sqlite_url: str, system_overrides: dict[str, Any]
) -> AsyncIterator[Worker]:
    settings = make_settings(redis_url, sqlite_url, instance="wk1", **system_overrides)
    async with running_worker(settings) as worker:
        yield worker


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with api.client() as client:
        yield client
