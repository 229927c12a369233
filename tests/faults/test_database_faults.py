"""The database goes away (a cut network path to PostgreSQL) and comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import make_url

from tests.api.streaming import read_stream, start
from tests.faults.conftest import FaultSystem
from tests.postgres import TcpProxy, fresh_postgres_database, postgres_url

pytestmark = pytest.mark.postgres


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with fresh_postgres_database() as database:
        url = make_url(database.url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        await proxy.start()
        proxy.database = database.name  # type: ignore[attr-defined]
        try:
            yield proxy
        finally:
            await proxy.cut()


@pytest.fixture
def database_url(proxy: TcpProxy) -> str:
    return postgres_url(proxy.database, port=proxy.port)  # type: ignore[attr-defined]


async def test_database_outage_gives_503_and_the_run_still_ends_right(
    system: FaultSystem, proxy: TcpProxy
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=60, interval_ms=25)
    async with asyncio.timeout(10):
        while (await client.get(f"/runs/{run_id}")).json()["last_seq"] < 5:
            await asyncio.sleep(0.02)
    await proxy.cut()
    async with asyncio.timeout(15):
        listed = await client.get("/runs")
        health = await client.get("/healthz")
    assert listed.status_code == 503 and listed.json()["error"]["code"] == "unavailable"
    assert health.status_code == 503 and health.json()["checks"]["database"] != "ok"
    await proxy.start()
    events = await asyncio.wait_for(read_stream(client, run_id), 60)
    assert [int(e["id"]) for e in events] == list(range(1, 63))
    assert events[-1]["data"]["status"] == "completed"
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "completed"
    await system.assert_back_to_baseline()
