"""``runstream top --once --json`` on a cluster: every node's ``CLIENT LIST``, the budget
per node, and the top's own one connection per node."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson

from tests.api.streaming import start
from tests.cli import cli_env, run_cli
from tests.cluster.conftest import MakeSettings
from tests.redis_cluster import RedisCluster
from tests.system import running_api, running_worker


async def cluster_snapshot(cluster: RedisCluster, *args: str) -> dict[str, Any]:
    env = cli_env(
        RUNSTREAM_REDIS_URL=cluster.url, RUNSTREAM_REDIS_CLUSTER="1", RUNSTREAM_INSTANCE="topper"
    )
    result = await asyncio.to_thread(run_cli, "top", "--once", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = orjson.loads(result.stdout)
    return value


async def test_top_reads_every_node_of_the_cluster(
    redis_cluster: RedisCluster, cluster_settings: MakeSettings
) -> None:
    async with (
        running_worker(cluster_settings("wk1")),
        running_api(cluster_settings("api1")) as api,
        api.client() as client,
    ):
        run_id = await start(client, "scripted", count=1, hang=True)
        async with client.stream("GET", f"/runs/{run_id}/stream") as stream:
            chunks = stream.aiter_bytes()  # held: a dropped iterator would close the stream
            await anext(chunks)
            snap = await cluster_snapshot(redis_cluster, "--metrics", api.url)
            seen = redis_cluster.client_names()
            await chunks.aclose()
        await client.post(f"/runs/{run_id}/stop")
    assert set(snap["nodes"]) == {f"127.0.0.1:{node.port}" for node in redis_cluster.nodes}
    assert sorted(snap["nodes"].values()).count("master") == 3
    by_name = {(p["role"], p["instance"]): p for p in snap["processes"]}
    api_row = by_name[("api", "api1")]
    assert api_row["over_budget"] == [] and api_row["streams"] == 1
    assert api_row["connections"]["pubsub"] == 1  # one stream: one link, on its master
    # What top reports per node is what each node's CLIENT LIST says (command pools may
    # grow or trim between the two readings; pub/sub and queue connections do not).
    for instance, row in (("api1", api_row), ("wk1", by_name[("worker", "wk1")])):
        for port, names in seen.items():
            counts = Counter(n.rsplit(":", 1)[1] for n in names if f":{instance}:" in n)
            reported = row["nodes"].get(f"127.0.0.1:{port}", {})
            for purpose in ("pubsub", "queue"):
                assert reported.get(purpose, 0) == counts[purpose], (port, reported, counts)
            assert reported.get("cmd", 0) <= 8
    top_row = by_name[("cli", "topper")]
    assert all(counts == {"top": 1} for counts in top_row["nodes"].values())
    assert len(top_row["nodes"]) == len(redis_cluster.nodes)  # one connection per node
    assert snap["runs"]["running"] == 1
