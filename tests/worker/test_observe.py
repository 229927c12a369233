"""A worker's own /metrics and /healthz (RUNSTREAM_METRICS_PORT), and both roles' gauges
on one /metrics when they share a process, as in ``runstream dev``."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from runstream.errors import ConfigError
from runstream.worker.process import run_worker
from tests.api.streaming import start
from tests.redis_server import free_port
from tests.system import Api, make_settings, running_worker


def sample(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            head, _, value = line.rpartition(" ")
            found = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if found == wanted:
                return float(value)
    return None


async def test_a_worker_serves_its_metrics_and_health(
    redis_url: str, sqlite_url: str, api: Api
) -> None:
    port = free_port()
    settings = make_settings(redis_url, sqlite_url, instance="wk-obs", metrics_port=port)
    async with (
        running_worker(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scrape,
        api.client() as client,
    ):
        health = await scrape.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "checks": {"redis": "ok", "pubsub": "ok", "database": "ok"},
        }
        mine = {"role": "worker", "instance": "wk-obs"}
        text = (await scrape.get("/metrics")).text
        assert sample(text, "runstream_redis_pool_max", **mine) == 8
        assert sample(text, "runstream_pubsub_connected", **mine) == 1
        assert sample(text, "runstream_active_runs", **mine) == 0
        run_id = await start(client, "scripted", count=1, hang=True)

        async def active() -> float | None:
            return sample((await scrape.get("/metrics")).text, "runstream_active_runs", **mine)

        deadline = asyncio.get_running_loop().time() + 10
        while await active() != 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await client.post(f"/runs/{run_id}/stop")
        while await active() != 0:
            assert asyncio.get_running_loop().time() < deadline + 10
            await asyncio.sleep(0.05)
        appended = sample(
            (await scrape.get("/metrics")).text, "runstream_events_appended_total", **mine
        )
        assert appended is not None and appended >= 3


async def test_both_roles_show_on_one_metrics_page_when_they_share_a_process(
    redis_url: str, sqlite_url: str, api: Api
) -> None:
    async with running_worker(make_settings(redis_url, sqlite_url, instance="wk-dev")):
        async with api.client() as client:
            text = (await client.get("/metrics")).text
    assert sample(text, "runstream_redis_pool_max", role="worker", instance="wk-dev") == 8
    assert sample(text, "runstream_redis_pool_max", role="api", instance="api1") == 8
    assert sample(text, "runstream_active_runs", role="worker", instance="wk-dev") == 0


async def test_a_metrics_port_in_use_stops_the_worker_with_one_line(
    redis_url: str, sqlite_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(redis_url, sqlite_url, instance="wk-busy", metrics_port=port)
        with pytest.raises(ConfigError, match="RUNSTREAM_METRICS_PORT: cannot listen"):
            await run_worker(settings, asyncio.Event())
