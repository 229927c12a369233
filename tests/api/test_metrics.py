"""GET /metrics: what the API process holds, as Prometheus text, read when scraped."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.streaming import read_first, read_stream, start

pytestmark = pytest.mark.usefixtures("worker")


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("instance") == "api1":
                values[sample.name] = values.get(sample.name, 0) + sample.value
    return values


async def test_metrics_show_connections_subscriptions_and_streams(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "scripted", count=1, hang=True)
    opened = [asyncio.Event() for _ in range(3)]
    readers = [asyncio.create_task(read_first(client, run_id, 10, got_one=e)) for e in opened]
    async with asyncio.timeout(10):
        await asyncio.gather(*(e.wait() for e in opened))
    live = await scrape(client)
    assert live["runstream_pubsub_connected"] == 1
    assert live["runstream_redis_pool_max"] == 8
    assert live["runstream_active_streams"] == 3
    assert live["runstream_pubsub_channels"] == 1  # three readers, one channel
    assert live["runstream_pubsub_subscribers"] == 3
    await client.post(f"/runs/{run_id}/stop")
    await asyncio.gather(*readers)
    await read_stream(client, run_id)
    done = await scrape(client)
    assert done["runstream_active_streams"] == 0
    assert done["runstream_pubsub_subscribers"] == 0
    assert done["runstream_redis_pool_in_use"] == 0
    assert (
        done["runstream_events_delivered_total"]
        >= live.get("runstream_events_delivered_total", 0) + 3
    )
