"""First steps on a real Redis Cluster (three masters, three replicas): a run's keys
share one slot, so its scripts (the fenced append, the byte-bounded read, the leases)
run on the node that owns it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.cluster import key_slot

from runstream.errors import TooManyConnections
from runstream.models import build_event
from runstream.streams import keys
from runstream.streams.cluster import open_cluster, slot_map_moved
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import REFUSED, EventLog, Fence
from tests.redis_cluster import RedisCluster

ERRORS = RedisErrors(role="test", instance="cluster")


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    client = AsyncRedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


def test_the_cluster_has_three_masters_each_with_a_replica(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.masters()) == 3 and len(redis_cluster.nodes) == 6


def test_a_runs_keys_and_channels_share_one_slot() -> None:
    run_id = "3f0c8c8e-5d4a-4c1b-9e61-0c3f7f0b6a51"
    names = [
        keys.run_events(run_id),
        keys.run_notify(run_id),
        keys.run_control(run_id),
        keys.run_stop(run_id),
        keys.run_lock(run_id),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1


async def test_the_fenced_append_and_the_read_run_on_the_cluster(
    cluster_client: AsyncRedisCluster,
) -> None:
    log = EventLog(cluster_client, ttl_s=60, errors=ERRORS)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    events = [build_event({"type": "t"}, n, now, 10_000) for n in (1, 2, 3)]
    fence = Fence("wk1:token", 5000)
    assert await log.append("cluster-run", events, fence) == 3
    assert [e.seq for e in await log.read("cluster-run", 0)] == [1, 2, 3]
    await cluster_client.set(keys.run_lock("cluster-run"), "wk2:other", px=5000)
    more = [build_event({"type": "t"}, 4, now, 10_000)]
    assert await log.append("cluster-run", more, fence) == REFUSED
    assert await log.last_seq("cluster-run") == 3


async def test_a_crowd_waits_for_the_cluster_budget_instead_of_failing(
    redis_cluster: RedisCluster,
) -> None:
    async with open_cluster(
        redis_cluster.url, role="test", instance="crowd", max_connections=2, timeout=10
    ) as client:
        peak: dict[int, int] = {}
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                for port, names in redis_cluster.client_names("runstream:test:crowd").items():
                    peak[port] = max(peak.get(port, 0), len(names))
                await asyncio.sleep(0.02)

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(sample())
            # Each BLPOP holds its connection for 50 ms; 40 at once, keys on every master.
            await asyncio.gather(*(client.blpop([f"crowd:{n}"], timeout=0.05) for n in range(40)))
            done.set()
            await watcher
        assert peak and max(peak.values()) <= 2, peak


async def test_a_cluster_budget_held_too_long_is_too_many_connections(
    redis_cluster: RedisCluster,
) -> None:
    async with open_cluster(
        redis_cluster.url, role="test", instance="short", max_connections=1, timeout=0.05
    ) as client:
        slow = asyncio.create_task(client.blpop(["short:a"], timeout=0.5))
        await asyncio.sleep(0.1)  # the one permit is taken
        with pytest.raises(TooManyConnections), ERRORS:
            await client.get("short:b")
        await slow


async def test_a_key_placed_off_its_master_counts_as_moved_even_with_a_fresh_cache(
    redis_cluster: RedisCluster, cluster_client: AsyncRedisCluster
) -> None:
    # The client's slot cache is current (a MOVED answer refreshes it); what matters is
    # where the caller placed the key, e.g. the node a sharded subscription sits on.
    await cluster_client.ping()
    channel = keys.run_notify("placed-run")
    owner = f"127.0.0.1:{redis_cluster.owner(channel).port}"
    other = next(
        f"127.0.0.1:{m.port}" for m in redis_cluster.masters() if m.port != int(owner.split(":")[1])
    )
    assert await slot_map_moved(cluster_client, {channel: owner}) is False
    assert await slot_map_moved(cluster_client, {channel: other}) is True
