"""Command connections to a Redis Cluster (``RUNSTREAM_REDIS_CLUSTER=1``).

redis-py's :class:`~redis.asyncio.RedisCluster` keeps up to ``max_connections``
connections *per node*, and a caller that finds a node's connections all busy fails at
once (``MaxConnectionsError``). :class:`GatedCluster` adds what the standalone blocking
pool gives: every command and pipeline first takes one of ``max_connections`` permits
shared by the whole process, waiting up to ``timeout`` seconds. A command holds one
connection of one node and a pipeline at most one per node, so no node ever sees more
than ``max_connections`` connections from one process: the budget is per node.

A keeper pings, refreshes the slot map, and closes connections left idle for a whole
``idle_s`` beyond one per node, so ``CLIENT LIST`` of every node returns to its count at
rest after a burst. Also here: which master owns a key (:func:`primary_for`), read from
the client's slot map, for the sharded pub/sub hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import structlog
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError

from runstream.concurrency import finish_shielded, helper_task
from runstream.config import redact_url
from runstream.errors import ConfigError
from runstream.streams.connection import CLOSE_TIMEOUT_S, CommandClient, PoolStats, pool_stats
from runstream.streams.keys import client_name

log = structlog.get_logger(__name__)

_HOLDS_PERMIT: ContextVar[bool] = ContextVar("runstream_holds_cluster_permit", default=False)


class GatedCluster(RedisCluster):
    """A RedisCluster whose callers queue for a connection instead of failing at once."""

    def __init__(self, *args: Any, wait_s: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)  # type: ignore[misc]
        self.node_budget = max_connections
        self._gate = asyncio.Semaphore(max_connections)
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        """One of the process's ``max_connections`` permits, or MaxConnectionsError.

        Re-entrant within a task: a pipeline that retries a redirected command one by one
        already holds the permit that command needs (no deadlock among pipelines)."""
        if _HOLDS_PERMIT.get():
            yield
            return
        try:
            async with asyncio.timeout(self._wait_s):
                await self._gate.acquire()
        except TimeoutError:
            raise MaxConnectionsError(
                f"Too many connections: no cluster connection free within {self._wait_s:g}s"
            ) from None
        token = _HOLDS_PERMIT.set(True)
        try:
            yield
        finally:
            _HOLDS_PERMIT.reset(token)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        return _GatedPipeline(self, transaction)  # type: ignore[abstract]


class _GatedPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        cluster = self.cluster_client
        assert isinstance(cluster, GatedCluster)
        async with cluster.permit():
            return await super().execute(raise_on_error, allow_redirections)


def client_stats(client: CommandClient) -> PoolStats:
    """Connections a command client holds, by state; on a cluster, summed over its nodes
    (``max`` is then the budget per node)."""
    if not isinstance(client, RedisCluster):
        return pool_stats(client.connection_pool)
    in_use = idle = busiest = 0
    for node in _nodes(client):
        free = len(node._free)
        idle += free
        in_use += len(node._connections) - free
        busiest = max(busiest, len(node._connections))
    limit: int = client.connection_kwargs.get("max_connections", 100)
    return PoolStats(in_use=in_use, idle=idle, max=limit, on_busiest_node=busiest)


def primary_for(client: RedisCluster, key: str) -> ClusterNode:
    """The master that owns ``key``'s slot, as far as the client's slot map knows."""
    return client.nodes_manager.get_node_from_slot(client.keyslot(key))


async def refresh_topology(client: RedisCluster) -> None:
    """Read the slot map again (after a MOVED, a failover or a slot migration).

    redis-py marks every connection for reconnect on each refresh, so this is for when
    the map has changed or may have (:func:`slot_map_moved` says whether it has)."""
    if isinstance(client, GatedCluster):
        async with client.permit():  # the slot map is read over a pooled connection
            await client.nodes_manager.initialize()
    else:
        await client.nodes_manager.initialize()
    await _share_startup_nodes(client)


async def slot_map_moved(client: RedisCluster, placed: Mapping[str, str]) -> bool:
    """Whether, by the cluster's slot map now, any key of ``placed`` (key -> the node,
    ``host:port``, that serves it for the caller) has another master: one CLUSTER SLOTS,
    no reconnect.

    Compared with where the caller placed each key, not with the client's slot cache: a
    command answered MOVED updates that cache without moving the caller's keys."""
    answer: Any = await client.cluster_slots()  # {(first, last): {"primary": (host, port)}}
    ranges: dict[tuple[int, int], dict[str, Any]] = answer
    for key, node in placed.items():
        slot = client.keyslot(key)
        owner = next((r["primary"] for (lo, hi), r in ranges.items() if lo <= slot <= hi), None)
        if owner is None or node != f"{owner[0]}:{owner[1]}":
            return True
    return False


async def _share_startup_nodes(client: RedisCluster) -> None:
    """Let the slot map be read over the nodes' own pooled connections.

    redis-py keeps separate node objects for its startup nodes, each with a connection
    of its own beside the pool: one more than the budget on the node named by
    ``RUNSTREAM_REDIS_URL``. Once the map is known, the startup entries become the
    map's node objects (redis-py keeps them from then on)."""
    manager = client.nodes_manager
    for name, startup in list(manager.startup_nodes.items()):
        node = manager.nodes_cache.get(name)
        if node is not None and node is not startup:
            manager.startup_nodes[name] = node
            await startup.disconnect()


def _nodes(client: RedisCluster) -> list[ClusterNode]:
    """Every node object holding connections: the slot map's, and the startup nodes
    redis-py keeps apart to read the slot map from."""
    manager = client.nodes_manager
    found = {id(n): n for n in (*manager.nodes_cache.values(), *manager.startup_nodes.values())}
    return list(found.values())


class _Trimmer:
    """Closes a node's free connections that stayed free for a whole interval, keeping one."""

    def __init__(self) -> None:
        self._idle_before: set[int] = set()

    async def trim(self, client: RedisCluster) -> int:
        idle_now: set[int] = set()
        closed = 0
        in_map = {id(n) for n in client.nodes_manager.nodes_cache.values()}
        for node in _nodes(client):
            free = list(node._free)
            idle_now.update(id(c) for c in free)
            # Keep the most recently used one of a node in the slot map warm; close the
            # rest that were idle last time (all of them on a startup-only node object).
            for connection in free[:-1] if id(node) in in_map else free:
                if id(connection) in self._idle_before:
                    node._free.remove(connection)
                    node._connections.remove(connection)
                    await connection.disconnect()
                    closed += 1
        self._idle_before = idle_now
        return closed


@asynccontextmanager
async def open_cluster(
    redis_url: str,
    *,
    role: str,
    instance: str,
    purpose: str = "cmd",
    max_connections: int = 8,
    timeout: float = 2.0,
    idle_s: float = 10.0,
) -> AsyncIterator[GatedCluster]:
    """A cluster client reaching every node from ``redis_url`` (any node), at most
    ``max_connections`` named connections per node. Raises RedisError when no node
    answers (the caller's error map names it)."""
    client: GatedCluster = GatedCluster.from_url(  # type: ignore[assignment]
        redis_url,
        wait_s=timeout,
        max_connections=max_connections,
        client_name=client_name(role, instance, purpose),
        socket_connect_timeout=2.0,
    )
    try:
        await _first_contact(client, redis_url)
        async with helper_task(_keep(client, idle_s), name=f"runstream-cluster-{role}"):
            yield client
    finally:
        await finish_shielded(client.aclose(), within_s=CLOSE_TIMEOUT_S)


async def _first_contact(client: RedisCluster, redis_url: str) -> None:
    """Read the slot map now. A node that is not in cluster mode is a configuration error;
    an unreachable one is an outage (the client connects on its first command)."""
    try:
        await client.initialize()
        await _share_startup_nodes(client)
    except (RedisError, RedisClusterException, OSError) as exc:
        if "cluster mode is not enabled" in str(exc).lower():
            raise ConfigError(
                f"RUNSTREAM_REDIS_CLUSTER is set but {redact_url(redis_url)} is not a cluster "
                "node (cluster mode is not enabled); unset it or name a cluster node"
            ) from None
        log.warning("Redis Cluster unreachable at start", error=str(exc))


async def _keep(client: RedisCluster, idle_s: float) -> None:
    trimmer = _Trimmer()
    # No keep-alive ping: PING goes to every node. The slot map is kept by the hub.
    while True:
        await asyncio.sleep(idle_s / 2)
        try:
            await trimmer.trim(client)
        except (RedisError, OSError, ValueError) as exc:
            log.debug("cluster trim skipped", error=str(exc))
