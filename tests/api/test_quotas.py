"""Per-principal limits: active runs and open streams, shared by every API process, kept
in Redis with leases that expire by themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from runstream.streams import keys
from runstream.streams.connection import RedisErrors, open_redis
from runstream.streams.quotas import PrincipalQuotas
from tests.api.checks import assert_error
from tests.api.streaming import read_stream
from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.system import Api, make_settings, running_api

ALICE = "alice-key-0123456789"
BOB = "bob-key-01234567890"
Callers = tuple[httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]
LIMITS = {
    "api_keys": f"{ALICE}=alice,{BOB}=bob",
    "max_active_runs_per_principal": 2,
    "max_streams_per_principal": 2,
}


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    return LIMITS


@pytest.fixture
async def second_api(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    async with running_api(make_settings(redis_url, sqlite_url, instance="api2", **LIMITS)) as api:
        yield api


async def hang(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/runs", json={"agent": "scripted", "input": {"count": 0, "hang": True}}
    )


@pytest.fixture
async def callers(api: Api, second_api: Api) -> AsyncIterator[Callers]:
    """Alice through both API processes, and Bob."""
    async with (
        api.client(ALICE) as alice,
        second_api.client(ALICE) as alice2,
        api.client(BOB) as bob,
    ):
        yield alice, alice2, bob


@pytest.mark.usefixtures("worker")
async def test_active_runs_are_limited_per_principal_across_api_processes(
    callers: Callers,
) -> None:
    alice, alice2, bob = callers
    first = await hang(alice)
    assert first.status_code == 201
    assert (await hang(alice2)).status_code == 201
    refused = await hang(alice)
    assert_error(refused, 429, "too_many_runs")
    assert refused.headers["Retry-After"].isdigit()
    assert "RUNSTREAM_MAX_ACTIVE_RUNS_PER_PRINCIPAL" in refused.json()["error"]["message"]
    assert_error(await hang(alice2), 429, "too_many_runs")
    assert (await hang(bob)).status_code == 201  # another principal is not held back
    run_id = first.json()["id"]
    assert (await alice.post(f"/runs/{run_id}/stop")).status_code == 202
    await read_stream(alice, run_id)  # it has ended
    assert (await hang(alice)).status_code == 201
    for run in (await alice.get("/runs", params={"status": "running"})).json()["runs"]:
        await alice.post(f"/runs/{run['id']}/stop")
    for run in (await bob.get("/runs", params={"status": "running"})).json()["runs"]:
        await bob.post(f"/runs/{run['id']}/stop")


async def test_an_idempotent_retry_gets_its_run_back_at_the_limit(api: Api) -> None:
    async with api.client(ALICE) as alice:
        body = {"agent": "scripted", "input": {"count": 0, "hang": True}}
        first = await alice.post("/runs", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201
        assert (await hang(alice)).status_code == 201  # now at the limit of 2
        again = await alice.post("/runs", json=body, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        for run in (await alice.get("/runs")).json()["runs"]:
            await alice.post(f"/runs/{run['id']}/stop")


async def test_a_refused_run_leaves_nothing_queued(api: Api) -> None:
    async with api.client(ALICE) as alice:
        assert (await hang(alice)).status_code == 201
        assert (await hang(alice)).status_code == 201
        before = (await alice.get("/runs")).json()["runs"]
        assert_error(await hang(alice), 429)
        assert (await alice.get("/runs")).json()["runs"] == before
        for run in before:
            assert (await alice.post(f"/runs/{run['id']}/stop")).status_code == 202


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, run_id: str) -> AsyncIterator[None]:
    async with aconnect_sse(client, "GET", f"/runs/{run_id}/stream") as source:
        assert source.response.status_code == 200
        # Held for the block: an iterator left to the garbage collector closes the stream.
        messages = source.aiter_sse()
        await anext(messages)  # the stream is open and delivering
        yield
        await messages.aclose()


@pytest.mark.usefixtures("worker")
async def test_open_streams_are_limited_per_principal_and_freed_when_they_close(
    api: Api, second_api: Api, callers: Callers
) -> None:
    alice, alice2, bob = callers
    run_id = (await hang(alice)).json()["id"]
    bobs_run = (await hang(bob)).json()["id"]
    async with open_stream(alice, run_id), open_stream(alice2, run_id):
        refused = await alice.get(f"/runs/{run_id}/stream")
        assert_error(refused, 429, "too_many_streams")
        assert refused.headers["Retry-After"].isdigit()
        assert_error(await alice2.get(f"/runs/{run_id}/stream"), 429, "too_many_streams")
        async with open_stream(bob, bobs_run):
            pass
    await wait_until(lambda: api.resources.quotas.open_streams == 0)
    await wait_until(lambda: second_api.resources.quotas.open_streams == 0)
    async with open_stream(alice, run_id), open_stream(alice, run_id):
        pass
    await alice.post(f"/runs/{run_id}/stop")
    await bob.post(f"/runs/{bobs_run}/stop")


async def test_a_dead_processs_leases_expire_by_themselves(
    redis_url: str, redis_server: RedisServer
) -> None:
    errors = RedisErrors(role="api", instance="dead")
    async with open_redis(redis_url, role="api", instance="dead") as redis:
        quotas = PrincipalQuotas(
            redis, errors=errors, max_runs=1, max_streams=1, stream_lease_s=0.5
        )
        async with quotas:
            await quotas.take_stream("carol")
            await quotas.take_run("carol", "run-1", lease_s=0.5)
            with pytest.raises(Exception, match="RUNSTREAM_MAX_STREAMS_PER_PRINCIPAL"):
                await quotas.take_stream("carol")
            with pytest.raises(Exception, match="RUNSTREAM_MAX_ACTIVE_RUNS_PER_PRINCIPAL"):
                await quotas.take_run("carol", "run-2", lease_s=0.5)
        # The process is gone without releasing anything; its leases run out on their own.
        async with PrincipalQuotas(redis, errors=errors, max_runs=1, max_streams=1) as fresh:

            async def freed() -> bool:
                try:
                    await fresh.take_run("carol", "run-2", lease_s=5)
                    await fresh.take_stream("carol")
                except Exception:
                    return False
                return True

            deadline = asyncio.get_running_loop().time() + 10
            while not await freed():
                assert asyncio.get_running_loop().time() < deadline, "leases never expired"
                await asyncio.sleep(0.1)
            await fresh.release_run("carol", "run-2")
        for key in (keys.principal_runs("carol"), keys.principal_streams("carol")):
            assert redis_server.admin().pttl(key) != -1  # every key has a TTL
