"""Faults a cluster brings, in the middle of live runs: a pub/sub connection killed on one
node, a master failed over, a live run's slot migrated. Each case ends with every
reader holding the whole run, in order, and every process back to its connections at
rest on every node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from runstream.streams import keys
from runstream.streams.pubsub import ShardedHub
from tests.api.streaming import read_stream, start
from tests.cluster.conftest import MakeSettings
from tests.cluster.test_cluster_runs import purposes_per_node, wait_for_seq
from tests.conftest import wait_until
from tests.redis_cluster import RedisCluster
from tests.system import running_api, running_worker

EVENTS = 60
READERS = 5
FAST_IDLE = {"redis_idle_s": 1.0}


@dataclass
class Outcome:
    """What a run through a fault showed (checked once the processes are gone, so a
    failed check never leaves them half shut down)."""

    streams: list[list[dict[str, Any]]] = field(default_factory=list)
    followed: bool = False  # every channel confirmed again on its current master
    rested: dict[str, Any] | None = None  # connections not back to rest, if any

    def check(self) -> None:
        assert self.followed, "the hub did not follow the cluster (channels off their master)"
        lengths = set()
        for stream in self.streams:
            seqs = [int(m["id"]) for m in stream]
            assert seqs == list(range(1, len(seqs) + 1)), "an event lost or repeated"
            assert stream[-1]["data"]["status"] == "completed", stream[-1]
            lengths.add(len(seqs))
        assert len(lengths) == 1 and lengths.pop() > EVENTS  # every reader got the whole run
        assert self.rested is None, f"not back to rest: {self.rested}"


async def live_runs_through(
    cluster: RedisCluster,
    make: MakeSettings,
    disrupt: Callable[[list[str]], Awaitable[Any]],
) -> Outcome:
    """Start runs with readers, call ``disrupt(run_ids)`` mid-run, record what followed."""
    outcome = Outcome()
    async with (
        running_worker(make("wk1", **FAST_IDLE)),
        running_api(make("api1", **FAST_IDLE)) as api,
        api.client() as client,
    ):
        runs = [await start(client, "scripted", count=EVENTS, interval_ms=120) for _ in range(3)]
        readers = [
            asyncio.create_task(read_stream(client, run_id))
            for run_id in runs
            for _ in range(READERS)
        ]
        await wait_for_seq(client, runs[0], 10)
        await disrupt(runs)
        # Live delivery follows the cluster by itself (readers would also catch up on
        # their heartbeat; this is what shows the hub moved): every run's channel is
        # confirmed again, on the master that owns it now.
        hub = api.resources.hub
        assert isinstance(hub, ShardedHub)

        def on_owners() -> bool:
            listening = hub.listening()
            return all(
                listening.get(channel) == f"127.0.0.1:{cluster.owner(channel).port}"
                for channel in map(keys.run_notify, runs)
            )

        outcome.followed = await holds_within(on_owners, 20)
        async with asyncio.timeout(60):
            outcome.streams = await asyncio.gather(*readers)
        if not await holds_within(lambda: at_rest(cluster, ("api1", "wk1")), 30):
            outcome.rested = {i: purposes_per_node(cluster, i) for i in ("api1", "wk1")}
    return outcome


async def holds_within(predicate: Callable[[], bool], timeout: float) -> bool:
    try:
        await wait_until(predicate, timeout=timeout)
    except AssertionError:
        return False
    return True


def at_rest(cluster: RedisCluster, instances: tuple[str, ...]) -> bool:
    """Every process holds, on every node, no pub/sub connection and at most one
    command connection (plus the queue's, on the queue's node)."""
    for instance in instances:
        for counts in purposes_per_node(cluster, instance).values():
            if counts["pubsub"] or counts["cmd"] > 1 or counts["queue"] > 4:
                return False
    return True


async def test_a_pubsub_connection_killed_on_one_node_loses_nothing(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings
) -> None:
    async def kill(runs: list[str]) -> None:
        node = redis_cluster.owner(keys.run_notify(runs[0]))
        with node.admin() as admin:
            ids = [
                c["id"] for c in admin.client_list() if c.get("name") == "runstream:api:api1:pubsub"
            ]
            assert ids, "the API listens on the run's node"
            for client_id in ids:
                admin.client_kill_filter(_id=client_id)

    (await live_runs_through(redis_cluster, cluster_settings, kill)).check()


async def test_a_master_failed_over_mid_run_loses_nothing(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings
) -> None:
    async def fail_over(runs: list[str]) -> None:
        master = redis_cluster.owner(keys.run_events(runs[0]))
        await asyncio.to_thread(redis_cluster.fail_over, master)

    (await live_runs_through(redis_cluster, cluster_settings, fail_over)).check()


async def test_the_placement_check_catches_a_hub_that_does_not_follow_the_cluster(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stays_put(hub: ShardedHub) -> None:
        return None

    monkeypatch.setattr(ShardedHub, "_rebalance", stays_put)

    async def fail_over(runs: list[str]) -> None:
        master = redis_cluster.owner(keys.run_events(runs[0]))
        await asyncio.to_thread(redis_cluster.fail_over, master)

    outcome = await live_runs_through(redis_cluster, cluster_settings, fail_over)
    with pytest.raises(AssertionError, match="did not follow the cluster"):
        outcome.check()


async def test_a_live_runs_slot_migrated_loses_nothing(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings
) -> None:
    async def migrate(runs: list[str]) -> None:
        key = keys.run_events(runs[0])
        source = redis_cluster.owner(key)
        target = next(m for m in redis_cluster.masters() if m != source)
        await asyncio.to_thread(redis_cluster.migrate_slot, key, target)

    (await live_runs_through(redis_cluster, cluster_settings, migrate)).check()
