"""At the edge of the connection budget: fail fast with a 503, say so, recover alone."""

from __future__ import annotations

import asyncio

import pytest
import redis

from runstream.errors import TooManyConnections
from runstream.streams.connection import RedisErrors, open_redis
from tests.api.streaming import read_stream, start
from tests.faults.conftest import FaultSystem, kill_connections


async def test_server_refusing_clients_gives_fast_503_then_recovers(
    system: FaultSystem, full_server: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=1, hang=True)
    async with asyncio.timeout(10):
        while (await client.get(f"/runs/{run_id}")).json()["status"] != "running":
            await asyncio.sleep(0.02)
    assert kill_connections(full_server, "runstream:api:api1:cmd") >= 1
    full_server.config_set("maxclients", len(full_server.client_list()))

    async with asyncio.timeout(10):  # fast: no hang, no minute-long retries
        stops = [await client.post(f"/runs/{run_id}/stop") for _ in range(2)]
        streams = [await client.get(f"/runs/{run_id}/stream") for _ in range(2)]
    # The first call may only see its killed connection close; the refusal follows.
    assert all(r.status_code == 503 and r.headers["retry-after"] for r in stops)
    refused = [r.json()["error"] for r in stops if r.json()["error"]["code"] != "unavailable"]
    assert refused and all(e["code"] == "too_many_connections" for e in refused)
    assert all("Too many connections" in e["message"] for e in refused)
    # A stream is answered 200 with a retry hint instead: a browser's EventSource would
    # give up for good on a 503.
    for response in streams:
        assert response.status_code == 200 and response.content.startswith(b"retry: ")
        assert b"id: " not in response.content
    logged = capsys.readouterr().out
    assert "Too many connections" in logged and "role=api" in logged and "instance=api1" in logged

    full_server.config_set("maxclients", 10000)
    assert (await client.post(f"/runs/{run_id}/stop")).status_code == 202
    assert (await read_stream(client, run_id))[-1]["data"]["status"] == "stopped"
    await system.assert_back_to_baseline()


async def test_exhausted_pool_fails_fast_instead_of_opening_more(redis_url: str) -> None:
    async with open_redis(
        redis_url, role="api", instance="tiny", max_connections=1, timeout=0.2
    ) as client:
        held = await client.connection_pool.get_connection()
        try:
            with (
                pytest.raises(TooManyConnections) as caught,
                RedisErrors(role="api", instance="tiny"),
            ):
                await client.ping()
            assert (caught.value.role, caught.value.instance) == ("api", "tiny")
        finally:
            await client.connection_pool.release(held)
        assert await client.ping()
