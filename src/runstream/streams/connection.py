"""Command connections to Redis: one bounded, named, blocking pool per process.

Also the one place where redis-py's errors become runstream's (:class:`RedisErrors`,
which every Redis adapter applies to its own calls), so "Too many connections" is
recognised and named wherever it happens, whichever of its spellings redis-py uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runstream.budget import ErrorMap, is_budget_message
from runstream.concurrency import finish_shielded, helper_task
from runstream.errors import BackendUnavailable
from runstream.streams.keys import client_name

log = structlog.get_logger(__name__)

CommandClient = Redis | RedisCluster
"""The process's command client: one Redis, or a Redis Cluster (``streams.cluster``)."""


ScriptCall = tuple[AsyncScript, list[str], list[bytes | str | int]]
"""One script call for :func:`send_script_calls`: the script, its keys, its arguments."""


async def send_script_calls(client: CommandClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """Send script calls in one pipelined round trip; their answers, in order.

    redis-py's pipeline checks its scripts with a SCRIPT EXISTS round trip before every
    send (py-spy: 8 % of a worker's main thread went to that, and each batch of appends
    cost two round trips). Here the calls go as bare EVALSHA; when Redis answers NOSCRIPT
    (it restarted and lost its script cache) the scripts are loaded and the pipeline is
    sent once more, so every script sent this way must be safe to repeat. On a cluster
    they go as EVAL: redis-py refuses a pipelined EVALSHA there.
    """
    try:
        return await _send_pipelined(client, calls)
    except NoScriptError:
        for script in {id(call[0]): call[0] for call in calls}.values():
            script.sha = await client.script_load(script.script)
        return await _send_pipelined(client, calls)


async def _send_pipelined(client: CommandClient, calls: Sequence[ScriptCall]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            _queue_call(pipe, script, keys, args)
        results: list[Any] = await pipe.execute()
        return results


def _queue_call(
    pipe: Pipeline | ClusterPipeline,
    script: AsyncScript,
    keys: list[str],
    args: list[bytes | str | int],
) -> None:
    if isinstance(pipe, ClusterPipeline):
        body = script.script
        pipe.eval(body if isinstance(body, str) else bytes(body).decode(), len(keys), *keys, *args)
    else:
        pipe.evalsha(script.sha, len(keys), *keys, *args)


def is_budget_error(exc: BaseException) -> bool:
    """True when ``exc`` says a connection budget (pool or server) is exhausted."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnectionError) and is_budget_message(str(exc))


def small_retry() -> Retry:
    """One quick retry: enough to replace a connection that died with a restarted server,
    small enough that a refused connection is answered in milliseconds, not seconds."""
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)


def connection_kwargs(redis_url: str, name: str) -> dict[str, Any]:
    """Keyword arguments shared by every pool runstream makes (URL options included)."""
    from redis.asyncio.connection import parse_url

    kwargs: dict[str, Any] = dict(parse_url(redis_url))
    kwargs.update(
        client_name=name,
        socket_connect_timeout=2.0,
        retry=small_retry(),
    )
    return kwargs


CLOSE_TIMEOUT_S = 5.0
"""The most closing a pool may take (its sockets are closed, not drained)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """How many connections a pool holds, by state."""

    in_use: int
    idle: int
    max: int
    on_busiest_node: int = 0  # held on the node with most (a cluster: the budget is per node)


def pool_stats(pool: ConnectionPool) -> PoolStats:
    """Read a redis-py pool's counters (they are not public API, so this is the one reader)."""
    in_use = len(pool._in_use_connections)
    idle = len(pool._available_connections)
    return PoolStats(
        in_use=in_use, idle=idle, max=pool.max_connections, on_busiest_node=in_use + idle
    )


class TrimmingPool(BlockingConnectionPool):
    """A blocking pool that closes connections left idle for ``idle_s`` beyond the first.

    A burst may open up to ``max_connections``; once it is over the process goes back to
    one warm connection, so ``CLIENT LIST`` returns to the same count after any load.
    """

    def __init__(self, *, idle_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.idle_s = idle_s
        self._released_at: dict[int, float] = {}

    async def release(self, connection: Any) -> None:
        self._released_at[id(connection)] = time.monotonic()
        await super().release(connection)

    async def trim(self, keep: int = 1) -> int:
        """Disconnect idle connections unused for ``idle_s``, keeping ``keep``; returns how many."""
        now = time.monotonic()
        stale = []
        # Oldest first: the pool hands out the most recently released connection (LIFO).
        while len(self._available_connections) > keep:
            oldest = self._available_connections[0]
            if now - self._released_at.get(id(oldest), now) < self.idle_s:
                break
            stale.append(self._available_connections.pop(0))
        for connection in stale:
            self._released_at.pop(id(connection), None)
            await connection.disconnect()
        return len(stale)


@asynccontextmanager
async def open_redis(
    redis_url: str,
    *,
    role: str,
    instance: str,
    purpose: str = "cmd",
    max_connections: int = 8,
    timeout: float = 2.0,
    idle_s: float = 10.0,
) -> AsyncIterator[Redis]:
    """A Redis client over a blocking pool of at most ``max_connections`` named connections.

    A caller that finds every connection busy waits up to ``timeout`` seconds, then gets
    TooManyConnections (through :class:`RedisErrors`) instead of a new connection. A
    keeper trims idle connections and keeps one warm, reconnecting it after a restart.
    """
    pool = TrimmingPool(
        idle_s=idle_s,
        max_connections=max_connections,
        timeout=timeout,
        **connection_kwargs(redis_url, client_name(role, instance, purpose)),
    )
    client = Redis(connection_pool=pool)
    try:
        async with helper_task(_keep_pool(client, pool), name=f"runstream-pool-{role}"):
            yield client
    finally:
        await finish_shielded(pool.aclose(), within_s=CLOSE_TIMEOUT_S)


async def _keep_pool(client: Redis, pool: TrimmingPool) -> None:
    while True:
        with contextlib.suppress(RedisError, OSError):
            await client.ping()
        await pool.trim()
        await asyncio.sleep(pool.idle_s / 2)


class RedisErrors(ErrorMap):
    """Translates redis-py's errors into BackendUnavailable / TooManyConnections."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> None:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            if is_budget_error(exc):
                text = str(exc).removeprefix("Too many connections: ")
                raise self.exhausted(f"Too many connections: {text}", "redis") from exc
            raise BackendUnavailable(f"Redis unavailable: {exc}", dependency="Redis") from exc
        if isinstance(exc, RedisError | RedisClusterException):
            raise BackendUnavailable(f"Redis error: {exc}", dependency="Redis") from exc
