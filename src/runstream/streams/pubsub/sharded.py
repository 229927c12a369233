"""Sharded pub/sub on a Redis Cluster: one connection per master that has subscribers.

A sharded subscription lives on the master that owns its channel's slot, and one
connection reaches one node; so :class:`ShardedHub` keeps one *link* (a sharded
:class:`~runstream.streams.pubsub.hub.PubSubHub`) per master that owns at least one
channel this process listens to, never one per channel or slot. Links open when a
node's first channel is wanted and close once they have held none for ``idle_s``.

Slots move (a failover, a migration). The server then drops the channel
(``-SUNSUBSCRIBE``) or answers SSUBSCRIBE with ``MOVED``; the link says so, and the
rebalancer reads the slot map again and hands every channel whose master changed to the
right link, where its subscribers get RESYNC once it is confirmed (they catch up from
the log, which lives in the same slot). Every ``refresh_s`` one CLUSTER SLOTS checks the
wanted channels' masters, so a move nobody announced is found too (the full re-read
makes redis-py reconnect every command connection, so it is done only when needed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from redis.asyncio import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from runstream.concurrency import cancel_and_wait, collapse_excgroups, finish_shielded
from runstream.errors import SubscribeError, describe
from runstream.streams.cluster import primary_for, refresh_topology, slot_map_moved
from runstream.streams.connection import CLOSE_TIMEOUT_S
from runstream.streams.pubsub.hub import Decoder, HubStats, PubSubHub, Subscription

log = structlog.get_logger(__name__)

REBALANCE_PAUSE_S = 0.1
"""Least time between two rebalances: a burst of drops costs one slot-map read (doubled
after each failed read, up to 2 s)."""


@dataclass
class _Link:
    name: str  # the node, host:port
    hub: PubSubHub
    task: asyncio.Task[None]
    empty_since: float | None = None


class ShardedHub:
    """The process's pub/sub on a cluster; the same interface as :class:`PubSubHub`.

    Made by :func:`open_sharded_hub`.
    """

    def __init__(
        self,
        cluster: RedisCluster,
        redis_url: str,
        tasks: asyncio.TaskGroup,
        *,
        role: str,
        instance: str,
        queue_size: int,
        ping_interval: float,
        confirm_timeout: float,
        idle_s: float,
        refresh_s: float,
    ) -> None:
        self._cluster = cluster
        self._redis_url = redis_url
        self._tasks = tasks
        self._role = role
        self._instance = instance
        self._queue_size = queue_size
        self._ping_interval = ping_interval
        self._confirm_timeout = confirm_timeout
        self._idle_s = idle_s
        self._refresh_s = refresh_s
        self._links: dict[str, _Link] = {}  # node name -> its link
        self._where: dict[str, _Link] = {}  # channel -> the link that holds it
        self._trouble = asyncio.Event()
        self._topology_ok = True
        self._moves = 0
        self._closing = False

    # -- the hub interface ------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, channel: str, decode: Decoder | None = None
    ) -> AsyncIterator[Subscription]:
        """Listen to ``channel`` (on its master) until the block exits; see
        :meth:`PubSubHub.subscribe`."""
        if self._closing:
            raise SubscribeError("the pub/sub hub is closed")
        link = self._where.get(channel) or self._place(channel)
        sub = link.hub._add(channel, decode)
        link.empty_since = None
        try:
            await link.hub._reconcile(channel)
            await self._wait_confirmed(channel)
            yield sub
        finally:
            link = self._where.get(channel, link)  # where it is now, if it moved
            await link.hub._remove(channel, sub)
            if channel not in link.hub._wanted and self._where.get(channel) is link:
                del self._where[channel]
                if not link.hub._wanted:
                    link.empty_since = time.monotonic()

    def stats(self) -> HubStats:
        """Connection state and subscription counts over every link."""
        links = [link.hub.stats() for link in self._links.values()]
        return HubStats(
            connected=self.healthy,
            channels=sum(s.channels for s in links),
            subscribers=sum(s.subscribers for s in links),
            reconnects=sum(s.reconnects for s in links) + self._moves,
            connections=sum(1 for link in self._links.values() if link.hub._ps is not None),
        )

    @property
    def healthy(self) -> bool:
        """The slot map is readable and every link that holds channels is live."""
        return self._topology_ok and all(
            link.hub.healthy for link in self._links.values() if link.hub._wanted
        )

    def ping_age_s(self) -> float:
        """The oldest watchdog answer among links that hold channels (-1 when none)."""
        ages = [link.hub.ping_age_s() for link in self._links.values() if link.hub._wanted]
        return max(ages, default=-1.0)

    @property
    def confirm_timeout(self) -> float:
        """How long a subscription may take to be confirmed before it fails."""
        return self._confirm_timeout

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every link that holds channels is live; False on timeout."""
        deadline = time.monotonic() + timeout
        for link in list(self._links.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await link.hub.wait_connected(remaining):
                return False
        return self._topology_ok

    def links(self) -> dict[str, int]:
        """Channels held per node (``host:port``), for tests and ``runstream top``."""
        return {name: len(link.hub._wanted) for name, link in self._links.items()}

    def listening(self) -> dict[str, str]:
        """Each channel the server has confirmed, with the node (``host:port``) it is on."""
        return {
            channel: name
            for name, link in self._links.items()
            for channel in link.hub._wanted
            if channel in link.hub._confirmed
        }

    # -- placement --------------------------------------------------------------------

    def _placed(self) -> dict[str, str]:
        return {channel: link.name for channel, link in self._where.items()}

    def _place(self, channel: str) -> _Link:
        try:
            node = primary_for(self._cluster, channel)
        except Exception as exc:  # the slot is not covered (the cluster is reforming)
            raise SubscribeError(f"no master for {channel}: {describe(exc)}") from exc
        link = self._links.get(node.name) or self._open_link(node.name, node.host, node.port)
        self._where[channel] = link
        return link

    def _open_link(self, name: str, host: str, port: int | str) -> _Link:
        hub = PubSubHub(
            self._redis_url,
            role=self._role,
            instance=self._instance,
            queue_size=self._queue_size,
            ping_interval=self._ping_interval,
            confirm_timeout=self._confirm_timeout,
            node=(host, int(port)),
            on_trouble=self._trouble.set,
        )
        # A task of the hub's own TaskGroup: it ends when the link closes or the hub does.
        task = self._tasks.create_task(hub._run(), name=f"runstream-pubsub-{name}")
        link = self._links[name] = _Link(name, hub, task)
        return link

    async def _wait_confirmed(self, channel: str) -> None:
        try:
            async with asyncio.timeout(self._confirm_timeout):
                while True:
                    link = self._where.get(channel)
                    if link is None:
                        raise SubscribeError(f"{channel} is no longer wanted")
                    if channel in link.hub._confirmed:
                        return
                    # Woken when confirmed, when the link reconnects, or when the channel
                    # moves to another link (PubSubHub._take).
                    await link.hub._wakeups.setdefault(channel, asyncio.Event()).wait()
        except TimeoutError:
            raise SubscribeError(
                f"subscription to {channel} not confirmed within {self._confirm_timeout}s"
            ) from None

    # -- following the cluster ---------------------------------------------------------

    async def _rebalance_forever(self) -> None:
        failures = 0
        while not self._closing:
            try:
                async with asyncio.timeout(self._refresh_s):
                    await self._trouble.wait()
            except TimeoutError:
                pass
            troubled = self._trouble.is_set()
            self._trouble.clear()
            try:
                if troubled or await slot_map_moved(self._cluster, self._placed()):
                    await self._rebalance()
                await self._close_idle_links()
                failures = 0 if self._topology_ok else failures + 1
            except Exception as exc:  # the rebalancer must outlive any cluster state
                log.warning("pubsub rebalance failed; retrying", error=describe(exc))
                self._topology_ok = False
                self._trouble.set()
                failures += 1
            # Back off while the cluster cannot be read (an outage), up to 2 s.
            await asyncio.sleep(min(2.0, REBALANCE_PAUSE_S * 2 ** min(failures, 5)))

    async def _rebalance(self) -> None:
        """Read the slot map; move every channel whose master changed to its new link."""
        try:
            await refresh_topology(self._cluster)
            self._topology_ok = True
        except (RedisError, RedisClusterException, OSError) as exc:
            self._topology_ok = False
            log.warning("cluster slot map unreadable", error=describe(exc))
            self._trouble.set()  # try again after the pause
            return
        for channel, link in list(self._where.items()):
            node = primary_for(self._cluster, channel)
            if self._links.get(node.name) is not link:
                target = self._links.get(node.name) or self._open_link(
                    node.name, node.host, node.port
                )
                subs, decode = link.hub._take(channel)
                target.hub._give(channel, subs, decode)
                target.empty_since = None
                self._where[channel] = target
                self._moves += 1
                log.info(
                    "pubsub channel moved",
                    role=self._role,
                    instance=self._instance,
                    channel=channel,
                    node=node.name,
                )
                if not link.hub._wanted:
                    link.empty_since = time.monotonic()
                await link.hub._reconcile(channel)
                await target.hub._reconcile(channel)
            elif channel not in link.hub._requested:
                await link.hub._reconcile(channel)  # dropped, yet still this node's

    async def _close_idle_links(self) -> None:
        now = time.monotonic()
        for name, link in list(self._links.items()):
            idle = link.empty_since is not None and now - link.empty_since >= self._idle_s
            if idle and not link.hub._wanted:
                del self._links[name]
                await _close_link(link)

    async def _close(self) -> None:
        self._closing = True
        links, self._links = list(self._links.values()), {}
        for link in links:
            await _close_link(link)


async def _close_link(link: _Link) -> None:
    link.hub._closing = True
    await cancel_and_wait(link.task)
    try:
        await finish_shielded(link.hub._close(), within_s=CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.error("pubsub link close timed out")


@asynccontextmanager
async def open_sharded_hub(
    cluster: RedisCluster,
    redis_url: str,
    *,
    role: str,
    instance: str,
    queue_size: int = 256,
    ping_interval: float = 5.0,
    confirm_timeout: float = 5.0,
    idle_s: float = 10.0,
    refresh_s: float = 5.0,
) -> AsyncIterator[ShardedHub]:
    """Start a sharded hub over ``cluster`` (the process's command client, whose slot
    map it follows); on exit close every link, then stop the rebalancer."""
    with collapse_excgroups():
        async with asyncio.TaskGroup() as tasks:
            hub = ShardedHub(
                cluster,
                redis_url,
                tasks,
                role=role,
                instance=instance,
                queue_size=queue_size,
                ping_interval=ping_interval,
                confirm_timeout=confirm_timeout,
                idle_s=idle_s,
                refresh_s=refresh_s,
            )
            rebalancer = tasks.create_task(hub._rebalance_forever(), name="runstream-rebalance")
            try:
                yield hub
            finally:
                hub._closing = True
                await cancel_and_wait(rebalancer)
                await finish_shielded(hub._close(), within_s=2 * CLOSE_TIMEOUT_S)
