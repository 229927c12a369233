"""Everything a runstream process holds open, acquired and released in one place.

The API lifespan, the worker and the CLI all enter :func:`open_resources`; its exit
order is the reverse of its entry order, whatever fails, and no connection outlives it.
Per process: one bounded command pool, one pub/sub connection, one database engine and
the task queue (a producer in the API, a consumer in a worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from runstream.agents.registry import AgentRegistry, load_registry
from runstream.config import Settings
from runstream.queue import RunQueue, open_queue
from runstream.store.database import POOL_SIZE, open_store
from runstream.store.repository import RunStore
from runstream.streams.cluster import client_stats, open_cluster
from runstream.streams.connection import CommandClient, RedisErrors, open_redis
from runstream.streams.control import RunControl
from runstream.streams.eventlog import EventLog
from runstream.streams.follow import Sources
from runstream.streams.pubsub import Hub, open_hub
from runstream.streams.quotas import PrincipalQuotas
from runstream.streams.reads import SharedReads

RESERVED_REDIS_CONNECTIONS = 2
"""Command connections followers' reads leave to everything else (the pool's keeper,
creating and stopping runs, health checks), so a crowd of readers never starves them."""


@dataclass(frozen=True, slots=True)
class Resources:
    """The open connections and the objects built on them, for one process."""

    settings: Settings
    role: str
    redis: CommandClient
    hub: Hub
    log: EventLog
    control: RunControl
    store: RunStore
    queue: RunQueue
    agents: AgentRegistry
    redis_errors: RedisErrors
    reads: SharedReads
    quotas: PrincipalQuotas

    def sources(self) -> Sources:
        """What a stream follower reads from."""
        return Sources(hub=self.hub, reads=self.reads)

    async def ping_redis(self) -> None:
        """One command round trip; raises BackendUnavailable when Redis does not answer."""
        with self.redis_errors:
            await self.redis.ping()

    def pool_in_use(self) -> int:
        """Command connections currently lent out (0 when the process is idle)."""
        return client_stats(self.redis).in_use


def open_commands(
    settings: Settings, *, role: str, purpose: str = "cmd", max_connections: int | None = None
) -> AbstractAsyncContextManager[CommandClient]:
    """The process's command client: a bounded pool, or on a cluster
    (``RUNSTREAM_REDIS_CLUSTER``) a bounded client per node."""
    opener = open_cluster if settings.redis_cluster else open_redis
    return opener(
        settings.redis_url,
        role=role,
        instance=settings.instance,
        purpose=purpose,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        idle_s=settings.redis_idle_s,
    )


@asynccontextmanager
async def open_resources(settings: Settings, *, role: str) -> AsyncIterator[Resources]:
    """Open the process's connections; close all of them on exit."""
    agents = load_registry(settings.agents)  # a bad agent spec fails before any connection
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_commands(settings, role=role))
        hub = await stack.enter_async_context(
            open_hub(
                settings.redis_url,
                role=role,
                instance=settings.instance,
                queue_size=settings.subscriber_queue_size,
                ping_interval=settings.pubsub_ping_s,
                redis=redis,
                idle_s=settings.redis_idle_s,
            )
        )
        store = await stack.enter_async_context(
            open_store(settings.database_url, role=role, instance=settings.instance)
        )
        queue = await stack.enter_async_context(open_queue(settings, role=role, redis=redis))
        errors = RedisErrors(role=role, instance=settings.instance)
        log = EventLog(redis, ttl_s=settings.event_ttl_s, errors=errors)
        # Followers' reads and stream opens wait here, below the pool, for as long as their
        # clients are there: a crowd of them is backpressure, never a pool timeout.
        redis_gate = asyncio.Semaphore(
            max(1, settings.redis_max_connections - RESERVED_REDIS_CONNECTIONS)
        )
        reads = await stack.enter_async_context(
            SharedReads(
                log=log,
                load_run=store.get_run,
                read_archive=store.read_events,
                log_gate=redis_gate,
                db_gate=max(1, POOL_SIZE - 1),
                fresh_s=settings.heartbeat_s / 2,
            )
        )
        quotas = await stack.enter_async_context(
            PrincipalQuotas(
                redis,
                errors=errors,
                stream_gate=redis_gate,
                max_runs=settings.max_active_runs_per_principal,
                max_streams=settings.max_streams_per_principal,
            )
        )
        yield Resources(
            settings=settings,
            role=role,
            redis=redis,
            hub=hub,
            log=log,
            control=RunControl(redis, stop_ttl_s=settings.event_ttl_s, errors=errors),
            store=store,
            queue=queue,
            agents=agents,
            redis_errors=errors,
            reads=reads,
            quotas=quotas,
        )
