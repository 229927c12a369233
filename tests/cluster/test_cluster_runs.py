"""The contract on a real Redis Cluster: runs stream whole to many readers, resume across
API processes, stop; the hub holds one pub/sub connection per master it listens on."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from runstream.streams import keys
from runstream.streams.cluster import primary_for
from runstream.streams.pubsub import ShardedHub
from tests.api.streaming import read_first, read_stream, start
from tests.cluster.conftest import MakeSettings
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.system import running_api, running_worker
from tests.worker.test_observe import sample

EVENTS = 20


def purposes_per_node(cluster: RedisCluster, instance: str) -> dict[int, Counter[str]]:
    """Connections of one process on each node, by purpose."""
    return {
        port: Counter(name.rsplit(":", 1)[1] for name in names if f":{instance}:" in name)
        for port, names in cluster.client_names().items()
    }


async def test_runs_stream_whole_to_many_readers_over_one_link_per_master(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings
) -> None:
    check_readers(*await many_readers(redis_cluster, cluster_settings))


async def test_the_link_check_catches_a_connection_per_channel(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def one_link_per_channel(hub: ShardedHub, channel: str) -> Any:
        node = primary_for(hub._cluster, channel)
        link = hub._open_link(f"{node.name}/{channel}", node.host, node.port)
        hub._where[channel] = link
        return link

    monkeypatch.setattr(ShardedHub, "_place", one_link_per_channel)
    with pytest.raises(AssertionError, match="pubsub"):
        check_readers(*await many_readers(redis_cluster, cluster_settings))


async def many_readers(
    cluster: RedisCluster, make: MakeSettings
) -> tuple[dict[int, Counter[str]], dict[str, int], set[str], list[list[dict[str, Any]]]]:
    """Nine runs, four readers each, mid-run: the API's connections per node, its hub's
    links, the runs' masters; then every stream."""
    async with (
        running_worker(make("wk1")),
        running_api(make("api1")) as api,
        api.client() as client,
    ):
        runs = [await start(client, "scripted", count=EVENTS, interval_ms=50) for _ in range(9)]
        readers = [asyncio.create_task(read_stream(client, r)) for r in runs for _ in range(4)]
        await wait_for_seq(client, runs[-1], 2)
        held = purposes_per_node(cluster, "api1")
        owners = {f"127.0.0.1:{cluster.owner(keys.run_notify(r)).port}" for r in runs}
        hub = api.resources.hub
        assert isinstance(hub, ShardedHub)
        links = hub.links()
        metrics = (await client.get("/metrics")).text
        gauge = sample(metrics, "runstream_pubsub_connections", role="api", instance="api1")
        assert gauge == len(links), metrics
        busiest = sample(metrics, "runstream_redis_node_connections", role="api", instance="api1")
        assert busiest is not None and 1 <= busiest <= 8  # the alert's side of the budget
        streams = await asyncio.gather(*readers)
    return held, links, owners, streams


def check_readers(
    held: dict[int, Counter[str]],
    links: dict[str, int],
    owners: set[str],
    streams: list[list[dict[str, Any]]],
) -> None:
    for counts in held.values():
        assert counts["pubsub"] <= 1, f"pubsub connections per node: {held}"
        assert counts["cmd"] <= 8, f"command connections per node: {held}"
    assert set(links) == owners, f"pubsub links {links} for the runs' masters {owners}"
    for stream in streams:
        seqs = [int(message["id"]) for message in stream]
        assert seqs == list(range(1, len(seqs) + 1))
        assert stream[-1]["data"]["status"] == "completed", stream[-1]


async def test_a_stream_resumes_on_another_api_process(
    cluster_settings: MakeSettings,
) -> None:
    async with (
        running_worker(cluster_settings("wk1")),
        running_api(cluster_settings("api1")) as api1,
        running_api(cluster_settings("api2")) as api2,
        api1.client() as client1,
        api2.client() as client2,
    ):
        run_id = await start(client1, "scripted", count=EVENTS, interval_ms=50)
        first = await read_first(client1, run_id, 5)
        rest = await read_stream(client2, run_id, last_event_id=int(first[-1]["id"]))
        seqs = [int(m["id"]) for m in first + rest]
        assert seqs == list(range(1, len(seqs) + 1))
        assert rest[-1]["data"]["status"] == "completed"


async def test_a_stopped_run_ends_its_streams_on_the_cluster(
    cluster_settings: MakeSettings,
) -> None:
    async with (
        running_worker(cluster_settings("wk1")),
        running_api(cluster_settings("api1")) as api,
        api.client() as client,
    ):
        run_id = await start(client, "scripted", count=1000, interval_ms=50)
        reader = asyncio.create_task(read_stream(client, run_id))
        await wait_for_seq(client, run_id, 3)
        response = await client.post(f"/runs/{run_id}/stop")
        assert response.status_code == 202, response.text
        async with asyncio.timeout(15):
            stream = await reader
        assert stream[-1]["data"]["status"] == "stopped"
        seqs = [int(m["id"]) for m in stream]
        assert seqs == list(range(1, len(seqs) + 1))


async def wait_for_seq(client: httpx.AsyncClient, run_id: str, seq: int) -> None:
    """Wait until the run's log holds ``seq`` (the run is under way)."""

    async def reached() -> bool:
        response = await client.get(f"/runs/{run_id}")
        return (response.json().get("last_seq") or 0) >= seq

    async with asyncio.timeout(15):
        while not await reached():
            await asyncio.sleep(0.02)


async def test_the_queue_can_live_on_its_own_redis_beside_the_cluster(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings, private_redis: RedisServer
) -> None:
    beside = {"queue_redis_url": private_redis.url}
    async with (
        running_worker(cluster_settings("wk1", **beside)),
        running_api(cluster_settings("api1", **beside)) as api,
        api.client() as client,
    ):
        run_id = await start(client, "scripted", count=3, interval_ms=10)
        stream = await read_stream(client, run_id)
        on_cluster = [n for names in redis_cluster.client_names().values() for n in names]
        on_queue_redis = private_redis.client_names()
    assert stream[-1]["data"]["status"] == "completed"
    assert not [name for name in on_cluster if name.endswith(":queue")]
    assert "runstream:api:api1:queue" in on_queue_redis
    assert "runstream:worker:wk1:queue" in on_queue_redis
    assert all(name.endswith(":queue") for name in on_queue_redis)
