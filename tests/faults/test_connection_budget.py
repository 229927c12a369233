"""The connection budget (DESIGN.md I2): 1,000 streams on one API process and 200 runs on
one worker process hold no more Redis connections than the configuration allows."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from runstream.queue import QUEUE_CONNECTIONS
from tests.cli import Background, background, cli_env, free_port, healthy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(180)

STREAMS = 1000
RUNS = 200
POOL = 8  # RUNSTREAM_REDIS_MAX_CONNECTIONS, the default
BUDGET = POOL + 1 + QUEUE_CONNECTIONS  # command pool + one pub/sub + the queue's pool


def by_purpose(server: RedisServer, instance: str) -> Counter[str]:
    return Counter(
        name.rsplit(":", 1)[1] for name in server.client_names() if name.split(":")[2] == instance
    )


class Sampler:
    """Samples CLIENT LIST while the load runs and keeps the peak per process and purpose."""

    def __init__(self, server: RedisServer, instances: list[str]) -> None:
        self.server = server
        self.instances = instances
        self.peak: dict[str, Counter[str]] = {i: Counter() for i in instances}
        self.peak_total: dict[str, int] = dict.fromkeys(instances, 0)

    async def run(self) -> None:
        while True:
            for instance in self.instances:
                counts = await asyncio.to_thread(by_purpose, self.server, instance)
                self.peak[instance] |= counts
                self.peak_total[instance] = max(self.peak_total[instance], counts.total())
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process(*args: str, env: dict[str, str], workdir: Path) -> AsyncIterator[Background]:
    with background(*args, env=env, workdir=workdir) as proc:
        yield proc


async def test_connections_stay_within_budget_with_1000_streams_and_200_runs(
    redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = {
        "RUNSTREAM_REDIS_URL": redis_url,
        "RUNSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'budget.db'}",
        "RUNSTREAM_REDIS_MAX_CONNECTIONS": str(POOL),
        "RUNSTREAM_STOP_GRACE_S": "2",
        # One principal (auth off) holds every run and stream here.
        "RUNSTREAM_MAX_ACTIVE_RUNS_PER_PRINCIPAL": str(RUNS),
        "RUNSTREAM_MAX_STREAMS_PER_PRINCIPAL": str(STREAMS),
    }
    sampler = Sampler(redis_server, ["abudget", "wbudget"])
    limits = httpx.Limits(max_connections=STREAMS + 50, max_keepalive_connections=50)
    async with (
        process(
            "api",
            "--port",
            str(port),
            env=cli_env(**common, RUNSTREAM_INSTANCE="abudget"),
            workdir=tmp_path,
        ),
        process(
            "worker",
            env=cli_env(**common, RUNSTREAM_INSTANCE="wbudget", RUNSTREAM_WORKER_CONCURRENCY="250"),
            workdir=tmp_path,
        ),
        httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client,
        asyncio.TaskGroup() as tg,
    ):
        async with asyncio.timeout(30):
            while not await asyncio.to_thread(healthy, url):
                await asyncio.sleep(0.1)
        sampling = tg.create_task(sampler.run())
        run_ids = [
            (
                await client.post(
                    "/runs", json={"agent": "scripted", "input": {"count": 2, "hang": True}}
                )
            ).json()["id"]
            for _ in range(RUNS)
        ]
        async with asyncio.timeout(60):
            while True:
                running = (
                    await client.get("/runs", params={"status": "running", "limit": 100})
                ).json()
                page2 = []
                if running["next"]:
                    page2 = (
                        await client.get(
                            "/runs",
                            params={"status": "running", "limit": 100, "cursor": running["next"]},
                        )
                    ).json()["runs"]
                if len(running["runs"]) + len(page2) == RUNS:
                    break
                await asyncio.sleep(0.2)

        opened = asyncio.Semaphore(0)
        finals: list[str] = []

        async def reader(run_id: str) -> None:
            got = 0
            async with aconnect_sse(client, "GET", f"/runs/{run_id}/stream") as source:
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    got += 1
                    if got == 2:
                        opened.release()  # following live now
                    data = orjson.loads(sse.data)
                    if data["type"] == "status" and data["status"] != "running":
                        finals.append(data["status"])

        readers = [tg.create_task(reader(run_ids[i % RUNS])) for i in range(STREAMS)]
        async with asyncio.timeout(90):
            for _ in range(STREAMS):
                await opened.acquire()
        during = {i: by_purpose(redis_server, i) for i in ("abudget", "wbudget")}
        for run_id in run_ids:
            assert (await client.post(f"/runs/{run_id}/stop")).status_code == 202
        async with asyncio.timeout(60):
            await asyncio.gather(*readers)
        sampling.cancel()
    assert finals == ["stopped"] * STREAMS
    for instance in ("abudget", "wbudget"):
        peak = sampler.peak[instance]
        assert peak["pubsub"] == 1, (instance, peak)
        assert peak["cmd"] <= POOL, (instance, peak)
        assert peak["queue"] <= QUEUE_CONNECTIONS, (instance, peak)
        assert sampler.peak_total[instance] <= BUDGET, (instance, peak)
        assert set(peak) <= {"cmd", "pubsub", "queue"}, (instance, peak)
    print(f"\nconnections with {STREAMS} streams and {RUNS} runs open: {during}")
    print(f"peaks over the whole test: {dict(sampler.peak)}")
