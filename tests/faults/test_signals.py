"""Real signals to real processes: SIGTERM to a worker mid-run, to an API with streams open."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from tests.api.streaming import read_stream, start
from tests.cli import background, cli_env, free_port, healthy
from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.system import Api, make_settings, running_api, running_worker

pytestmark = pytest.mark.timeout(90)


def env_for(redis_url: str, sqlite_url: str, instance: str, **extra: str) -> dict[str, str]:
    values = {
        "RUNSTREAM_REDIS_URL": redis_url,
        "RUNSTREAM_DATABASE_URL": sqlite_url,
        "RUNSTREAM_INSTANCE": instance,
        "RUNSTREAM_SHUTDOWN_GRACE_S": "1",
        "RUNSTREAM_STOP_GRACE_S": "1",
        "RUNSTREAM_WORKER_LOST_S": "3",
    }
    return cli_env(**{**values, **extra})


@pytest.fixture
async def api(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    async with running_api(make_settings(redis_url, sqlite_url, instance="api1")) as api:
        yield api


async def wait_running(client: httpx.AsyncClient, run_id: str) -> None:
    async with asyncio.timeout(20):
        while (await client.get(f"/runs/{run_id}")).json()["status"] != "running":
            await asyncio.sleep(0.05)


async def test_worker_sigterm_mid_run_stops_its_runs_and_releases_everything(
    api: Api, redis_url: str, sqlite_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = env_for(redis_url, sqlite_url, "wsig")
    async with api.client() as client:
        with background("worker", env=env, workdir=tmp_path) as worker:
            runs = [
                await start(client, "scripted", count=1, hang=True),
                await start(client, "scripted", count=1, hang=True, ignore_stop=True),
                await start(client, "scripted", count=100000, interval_ms=20),
            ]
            for run_id in runs:
                await wait_running(client, run_id)
            assert "runstream:worker:wsig:pubsub" in redis_server.client_names()
            code = await asyncio.to_thread(worker.signal_and_wait, signal.SIGTERM, 20)
            assert code == 0, worker.stderr
        for run_id in runs:
            run = (await client.get(f"/runs/{run_id}")).json()
            assert (run["status"], run["error"]) == ("stopped", "worker shut down")
            final = (await read_stream(client, run_id))[-1]["data"]
            assert (final["status"], final["error"]) == ("stopped", "worker shut down")
    assert [n for n in redis_server.client_names() if ":wsig:" in n] == []
    assert "Traceback" not in worker.stderr


async def test_api_sigterm_closes_streams_which_resume_on_another_api(
    api: Api, redis_url: str, sqlite_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(redis_url, sqlite_url, "asig", RUNSTREAM_SHUTDOWN_GRACE_S="30")
    seen: list[list[int]] = [[] for _ in range(10)]

    async def follow(client: httpx.AsyncClient, run_id: str, into: list[int]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            async with aconnect_sse(client, "GET", f"/runs/{run_id}/stream") as source:
                async for sse in source.aiter_sse():
                    if sse.data:
                        into.append(int(orjson.loads(sse.data)["seq"]))

    async with running_worker(make_settings(redis_url, sqlite_url, instance="w1")):
        with background("api", "--port", str(port), env=env, workdir=tmp_path) as doomed:
            async with asyncio.timeout(30):
                while not await asyncio.to_thread(healthy, url):
                    await asyncio.sleep(0.05)
            async with httpx.AsyncClient(base_url=url, timeout=60) as first:
                run_id = await start(first, "scripted", count=300, interval_ms=10)
                readers = [asyncio.create_task(follow(first, run_id, s)) for s in seen]
                await wait_until(lambda: all(len(s) >= 3 for s in seen), timeout=20)
                code = await asyncio.to_thread(doomed.signal_and_wait, signal.SIGTERM, 15)
                assert code == 0, doomed.stderr
                await asyncio.wait_for(asyncio.gather(*readers), 15)  # every stream ended
        assert [n for n in redis_server.client_names() if ":asig:" in n] == []
        async with api.client() as second:  # the clients resume on another API process
            for got in seen:
                rest = await read_stream(second, run_id, last_event_id=got[-1])
                got += [int(e["id"]) for e in rest]
                assert got == list(range(1, 303))
