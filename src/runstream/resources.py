"""Everything a runstream process holds open, acquired and released in one place.

The API lifespan, the worker and the CLI all enter :func:`open_resources`; its exit
order is the reverse of its entry order, whatever fails, and no connection outlives it.
Per process: one bounded command pool, one pub/sub connection, one database engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis

from runstream.agents.registry import AgentRegistry, load_registry
from runstream.concurrency import complete_before_cancel
from runstream.config import Settings
from runstream.models import Event, Run
from runstream.store.database import open_store
from runstream.store.repository import RunStore
from runstream.streams.connection import open_redis, pool_stats
from runstream.streams.control import RunControl
from runstream.streams.eventlog import EventLog
from runstream.streams.follow import Sources
from runstream.streams.pubsub import PubSubHub, open_hub


@dataclass(frozen=True, slots=True)
class Resources:
    """The open connections and the objects built on them, for one process."""

    settings: Settings
    role: str
    redis: Redis
    hub: PubSubHub
    log: EventLog
    control: RunControl
    store: RunStore
    agents: AgentRegistry

    def sources(self) -> Sources:
        """What a stream follower reads from."""
        return Sources(
            hub=self.hub,
            log=self.log,
            load_run=self._load_run,
            read_archive=self._read_archive,
        )

    # Followers are cancelled whenever a client leaves: their database reads complete
    # first (see complete_before_cancel).
    async def _load_run(self, run_id: str) -> Run | None:
        return await complete_before_cancel(self.store.get_run(run_id))

    async def _read_archive(self, run_id: str, after: int, limit: int) -> list[Event]:
        return await complete_before_cancel(self.store.read_events(run_id, after, limit))

    def pool_in_use(self) -> int:
        """Command connections currently lent out (0 when the process is idle)."""
        return pool_stats(self.redis.connection_pool).in_use


@asynccontextmanager
async def open_resources(settings: Settings, *, role: str) -> AsyncIterator[Resources]:
    """Open the process's connections; close all of them on exit."""
    agents = load_registry(settings.agents)  # a bad agent spec fails before any connection
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(
            open_redis(
                settings.redis_url,
                role=role,
                instance=settings.instance,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_timeout_s,
                idle_s=settings.redis_idle_s,
            )
        )
        hub = await stack.enter_async_context(
            open_hub(
                settings.redis_url,
                role=role,
                instance=settings.instance,
                queue_size=settings.subscriber_queue_size,
                ping_interval=settings.pubsub_ping_s,
            )
        )
        store = await stack.enter_async_context(open_store(settings.database_url))
        yield Resources(
            settings=settings,
            role=role,
            redis=redis,
            hub=hub,
            log=EventLog(redis, ttl_s=settings.event_ttl_s),
            control=RunControl(redis, stop_ttl_s=settings.event_ttl_s),
            store=store,
            agents=agents,
        )
