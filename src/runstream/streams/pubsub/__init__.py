"""The only package that touches Redis pub/sub: a few shared connections per process.

- :mod:`.hub`: :class:`PubSubHub`, every local subscriber over one connection (one
  Redis), also used as one link of the sharded hub;
- :mod:`.sharded`: :class:`ShardedHub`, sharded pub/sub on a Redis Cluster, one
  connection per master that holds subscribed channels.

:func:`open_hub` opens the one the process's command client calls for; both answer the
:class:`Hub` interface. :func:`publish` sends on a channel through the command client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from redis.asyncio import RedisCluster

from runstream.streams.connection import CommandClient
from runstream.streams.pubsub.hub import (
    RESYNC,
    Decoder,
    HubStats,
    Message,
    PubSubHub,
    Subscription,
    publish,
)
from runstream.streams.pubsub.hub import open_hub as open_single_hub
from runstream.streams.pubsub.sharded import ShardedHub, open_sharded_hub

__all__ = [
    "RESYNC",
    "Decoder",
    "Hub",
    "HubStats",
    "Message",
    "PubSubHub",
    "ShardedHub",
    "Subscription",
    "open_hub",
    "publish",
]


class Hub(Protocol):
    """What subscribers and health checks use of a hub, single or sharded."""

    def subscribe(
        self, channel: str, decode: Decoder | None = None
    ) -> AbstractAsyncContextManager[Subscription]: ...

    def stats(self) -> HubStats: ...

    @property
    def healthy(self) -> bool: ...

    def ping_age_s(self) -> float: ...

    @property
    def confirm_timeout(self) -> float: ...

    async def wait_connected(self, timeout: float) -> bool: ...


@asynccontextmanager
async def open_hub(
    redis_url: str,
    *,
    role: str,
    instance: str,
    queue_size: int = 256,
    ping_interval: float = 5.0,
    confirm_timeout: float = 5.0,
    redis: CommandClient | None = None,
    idle_s: float = 10.0,
) -> AsyncIterator[Hub]:
    """The process's hub: sharded when ``redis`` (the command client) is a cluster client,
    whose slot map it then follows; else one connection to ``redis_url``."""
    if isinstance(redis, RedisCluster):
        async with open_sharded_hub(
            redis,
            redis_url,
            role=role,
            instance=instance,
            queue_size=queue_size,
            ping_interval=ping_interval,
            confirm_timeout=confirm_timeout,
            idle_s=idle_s,
        ) as sharded:
            yield sharded
        return
    async with open_single_hub(
        redis_url,
        role=role,
        instance=instance,
        queue_size=queue_size,
        ping_interval=ping_interval,
        confirm_timeout=confirm_timeout,
    ) as single:
        yield single
