"""A whole system (API + worker in this loop) with a leak baseline taken after warm-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.api.streaming import read_stream, start
from tests.faults.accounting import Accountant, Snapshot
from tests.redis_server import RedisServer
from tests.system import Api, Worker, make_settings, running_api, running_worker

FAULT_SETTINGS: dict[str, Any] = {
    "redis_idle_s": 0.5,  # pools trim back to one warm connection quickly
    "pubsub_ping_s": 0.5,
}


@dataclass
class FaultSystem:
    api: Api
    worker: Worker
    accountant: Accountant
    baseline: Snapshot
    server: RedisServer
    client: httpx.AsyncClient

    async def assert_back_to_baseline(self, timeout: float = 15.0) -> None:
        await self.accountant.assert_back_to(self.baseline, timeout)


@pytest.fixture
def fault_settings() -> dict[str, Any]:
    """Override in a test module to change the system's settings."""
    return {}


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Override in a test module to run the system on another database."""
    return sqlite_url


@pytest.fixture
async def system(
    redis_server: RedisServer, redis_url: str, database_url: str, fault_settings: dict[str, Any]
) -> AsyncIterator[FaultSystem]:
    values = {**FAULT_SETTINGS, **fault_settings}
    accountant = Accountant(redis_server)
    async with running_api(
        make_settings(redis_url, database_url, instance="api1", **values)
    ) as api:
        accountant.track("api", api.resources)
        worker_settings = make_settings(redis_url, database_url, instance="wk1", **values)
        async with running_worker(worker_settings) as worker, api.client() as client:
            assert worker.resources is not None
            accountant.track("worker", worker.resources)
            # Warm-up: one run streamed end to end starts every lazy part (the
            # queue's consumer group, the pools' first connections) before the baseline is taken.
            await read_stream(client, await start(client, "echo", text="warm up"))
            baseline = await accountant.settle()
            yield FaultSystem(api, worker, accountant, baseline, redis_server, client)


def kill_connections(admin: redis.Redis, name: str, *, then_refuse: bool = False) -> int:
    """Kill every connection named ``name`` through an admin connection already open.

    With ``then_refuse``, first lower maxclients to what remains after the kill, so the
    server refuses every new connection, reconnects included.
    """
    clients = admin.client_list()
    ids = [c["id"] for c in clients if c.get("name") == name]
    if then_refuse:
        admin.config_set("maxclients", len(clients) - len(ids))
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


@pytest.fixture
def full_server(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Hold one admin connection; lowering maxclients to the current count refuses any new one."""
    with redis_server.admin() as admin:
        admin.ping()
        yield admin
        admin.config_set("maxclients", 10000)
