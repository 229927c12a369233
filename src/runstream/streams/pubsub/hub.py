"""One pub/sub connection, shared by every local subscriber of its channels.

:class:`PubSubHub` multiplexes every local subscriber over a single named pub/sub
connection (the connection budget, docs/deployment.md). Channels are reference-counted:
the first local subscriber of a channel subscribes it on the server, the last one
unsubscribes it. Each subscriber gets a bounded :class:`Subscription`; a subscriber that
falls behind is not allowed to grow memory or to slow the others: its queue is emptied
and it receives :data:`RESYNC`, which tells it to catch up from the event log. After a
reconnect each subscriber gets :data:`RESYNC` too, once its channel is confirmed again
(not before: a catch-up read done before listening again would miss what is published in
between), because messages published while disconnected are lost.

One task, the reader, owns the connection: it reads, answers the watchdog, and on any
error tears the PubSub down (``aclose()``, shielded) and builds a fresh one that
subscribes the wanted channels in one command. Other tasks only send SUBSCRIBE and
UNSUBSCRIBE, under a lock, reconciling the server's channel set with the wanted one;
so an UNSUBSCRIBE can never land after a newer SUBSCRIBE of the same channel.

On a Redis Cluster the same class is one *link* of the sharded hub (``sharded``): a
connection to one master, with SSUBSCRIBE/SUNSUBSCRIBE and no private channel. A link
reports what only the server can tell it (a channel it dropped at a failover or a slot
move, a MOVED answer, a lost connection) through ``on_trouble``, and the sharded hub
moves channels between links.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError

from runstream.budget import budget_exhausted
from runstream.concurrency import finish_shielded, helper_task
from runstream.errors import SubscribeError, describe
from runstream.streams.connection import (
    CLOSE_TIMEOUT_S,
    CommandClient,
    connection_kwargs,
    is_budget_error,
)
from runstream.streams.keys import client_name, hub_channel

log = structlog.get_logger(__name__)


class _Resync:
    """Marker telling a subscriber that messages may have been lost."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()

Message = object
"""What a subscription yields: the channel's payload (bytes, or what the channel's decoder
made of it once for every local subscriber), or :data:`RESYNC`."""

Decoder = Callable[[bytes], object]


class Subscription:
    """One local subscriber's bounded view of one channel.

    A list and one waiter rather than an ``asyncio.Queue`` (which carries three deques
    and an Event): an API process holds one of these per open stream, mostly empty. The
    list stays short (the subscriber drains it at each wake-up, and it never holds more
    than the hub's queue size), so taking from its front costs nothing worth a deque.
    """

    __slots__ = (
        "_deadline",
        "_items",
        "_maxsize",
        "_timer",
        "_timer_at",
        "_waiter",
        "channel",
        "overflows",
    )

    def __init__(self, channel: str, maxsize: int) -> None:
        self.channel = channel
        self._items: list[Message] = []
        self._maxsize = maxsize
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline: float | None = None  # loop time the current get() times out at
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.overflows = 0

    def __len__(self) -> int:
        """Messages waiting to be read."""
        return len(self._items)

    async def get(self, timeout: float | None = None) -> Message:
        """The next message, or :data:`RESYNC` when some may have been missed; raises
        TimeoutError when nothing comes within ``timeout`` seconds.

        One timer per subscription, not one per call: a get() only moves the deadline,
        and the timer, when it fires before the deadline, re-arms itself for it. A busy
        stream's reader calls get() once per message; a timer set and cancelled each
        time was the largest share of the API's CPU at 5,000 streams.
        """
        loop = asyncio.get_running_loop()
        deadline = self._deadline = None if timeout is None else loop.time() + timeout
        while not self._items:
            if deadline is not None and (self._timer is None or self._timer_at > deadline):
                self._arm(loop, deadline)
            waiter = self._waiter = loop.create_future()
            try:
                timed_out = await waiter
            finally:
                self._waiter = None
            if timed_out and not self._items:
                raise TimeoutError
        return self._items.pop(0)

    def stop_timer(self) -> None:
        """Cancel the subscription's timer (it is unsubscribed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.stop_timer()
        self._timer = loop.call_at(when, self._on_timer, loop)
        self._timer_at = when

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # nobody waits with a timeout now: the next get() arms its own
        if deadline > loop.time():
            self._arm(loop, deadline)  # a get() since moved the deadline on
        else:
            waiter.set_result(True)

    def drain(self) -> list[Message]:
        """Every message waiting now, without waiting for more."""
        items, self._items = self._items, []
        return items

    def _deliver(self, message: Message) -> None:
        if len(self._items) >= self._maxsize:
            self.overflows += 1
            self._resync()
            return
        self._items.append(message)
        self._wake()

    def _resync(self) -> None:
        # Anything still queued is older than the log the subscriber is about to read.
        self._items = [RESYNC]
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)


class _Subscribing:
    """``async with hub.subscribe(channel)``: a class rather than a generator-based
    context manager, whose generator frame every open stream would hold."""

    __slots__ = ("_channel", "_decode", "_hub", "_sub")

    def __init__(self, hub: PubSubHub, channel: str, decode: Decoder | None) -> None:
        self._hub, self._channel, self._decode = hub, channel, decode
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        hub, channel = self._hub, self._channel
        if hub._closing:
            raise SubscribeError("the pub/sub hub is closed")
        # Registered locally before any await: a concurrent first subscriber of the same
        # channel sees it, and the exit can always discard it.
        sub = self._sub = hub._add(channel, self._decode)
        try:
            await hub._reconcile(channel)
            await hub._wait_confirmed(channel)
        except BaseException:
            await hub._remove(channel, sub)
            raise
        return sub

    async def __aexit__(self, *_: object) -> None:
        assert self._sub is not None
        await self._hub._remove(self._channel, self._sub)


@dataclass(frozen=True, slots=True)
class HubStats:
    """A snapshot of the hub for health checks and metrics."""

    connected: bool
    channels: int
    subscribers: int
    reconnects: int
    connections: int = 1  # pub/sub connections held (on a cluster, one per master in use)


class PubSubHub:
    """Shares one pub/sub connection among every subscriber of the process.

    Create it with :func:`open_hub`; subscribe with ``async with hub.subscribe(ch) as sub``.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        role: str,
        instance: str,
        queue_size: int = 256,
        ping_interval: float = 5.0,
        confirm_timeout: float = 5.0,
        node: tuple[str, int] | None = None,
        on_trouble: Callable[[], None] | None = None,
    ) -> None:
        self._role = role
        self._instance = instance
        self._queue_size = queue_size
        self._ping_interval = ping_interval
        self._confirm_timeout = confirm_timeout
        self.sharded = node is not None
        self._on_trouble = on_trouble or (lambda: None)
        # A sharded link has no private channel: its channels live on its node only.
        self._private: str | None = None if self.sharded else hub_channel(role, instance)
        kwargs = connection_kwargs(redis_url, client_name(role, instance, "pubsub"))
        if node is not None:
            # No silent reconnect: redis-py would resubscribe every channel in one command,
            # which a cluster refuses across slots. The reader rebuilds the link instead.
            kwargs.update(host=node[0], port=node[1], retry=Retry(NoBackoff(), 0))
        # One connection at most: a bug that asks for a second fails at once.
        self._pool = ConnectionPool(max_connections=1, **kwargs)
        self._client = Redis(connection_pool=self._pool)
        self._ps: PubSub | None = None
        self._lock = asyncio.Lock()  # serialises commands against reconnects
        self._wakeups: dict[str, asyncio.Event] = {}  # set when a channel may be confirmed
        self._wanted: dict[str, set[Subscription]] = {}
        self._decoders: dict[str, Decoder] = {}
        self._requested: set[str] = set()  # what we last asked the server for
        self._pending: dict[str, int] = {}  # SUBSCRIBE confirmations still to come
        self._unsubscribing: dict[str, int] = {}  # our SUNSUBSCRIBEs not yet answered
        self._confirmed: set[str] = set()
        self._resubscribed: set[str] = set()
        self._broken = False
        self._closing = False
        self._reconnects = 0
        self._ping_sent_at: float | None = None
        self._last_pong: float | None = None

    # -- public API -------------------------------------------------------------------

    def subscribe(self, channel: str, decode: Decoder | None = None) -> _Subscribing:
        """Listen to ``channel`` until the ``async with`` block exits.

        Entering returns once the server has confirmed the subscription, so whatever is
        published after this point reaches the subscription. Raises SubscribeError when
        the confirmation does not come within the confirm timeout. ``decode`` turns a
        payload into what subscribers get, once per message for all of them (every
        subscriber of a channel passes the same one); a payload it cannot decode is a
        RESYNC.
        """
        return _Subscribing(self, channel, decode)

    def stats(self) -> HubStats:
        """Connection state and subscription counts, for /healthz and /metrics."""
        return HubStats(
            connected=self.healthy,
            channels=len(self._wanted),
            subscribers=sum(len(s) for s in self._wanted.values()),
            reconnects=self._reconnects,
            connections=int(self._ps is not None),
        )

    @property
    def healthy(self) -> bool:
        """Connected, and the watchdog's last ping was answered in time."""
        if self._ps is None or self._broken:
            return False
        return not self._pong_overdue(time.monotonic())

    def ping_age_s(self) -> float:
        """Seconds since the watchdog last heard the server (-1 before the first answer);
        much more than ``ping_interval`` means the watchdog is overdue."""
        if self._last_pong is None:
            return -1.0
        return time.monotonic() - self._last_pong

    @property
    def confirm_timeout(self) -> float:
        """How long a subscription may take to be confirmed before it fails."""
        return self._confirm_timeout

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the hub holds a live connection (a sharded link: until every wanted
        channel is confirmed); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                for channel in [self._private] if self._private else list(self._wanted):
                    await self._wait_for(channel, timeout)
        except TimeoutError:
            return False
        return True

    # -- subscription bookkeeping -----------------------------------------------------

    def _add(self, channel: str, decode: Decoder | None) -> Subscription:
        sub = Subscription(channel, self._queue_size)
        self._wanted.setdefault(channel, set()).add(sub)
        if decode is not None:
            self._decoders.setdefault(channel, decode)
        return sub

    async def _remove(self, channel: str, sub: Subscription) -> None:
        sub.stop_timer()  # its timer goes with it, on a single node and a cluster's link alike
        subs = self._wanted.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._wanted[channel]
                self._decoders.pop(channel, None)
        if self._settled(channel):
            return  # others still follow it: nothing to send, no shielded task for it
        try:
            await finish_shielded(self._reconcile(channel), within_s=self._confirm_timeout)
        except TimeoutError:
            self._broken = True  # the reader rebuilds the connection with what is wanted

    def _take(self, channel: str) -> tuple[set[Subscription], Decoder | None]:
        """Hand ``channel``'s subscribers over (to another link); reconcile afterwards."""
        self._wake(channel)  # its waiters look again, on the link that holds it now
        return self._wanted.pop(channel, set()), self._decoders.pop(channel, None)

    def _give(self, channel: str, subs: set[Subscription], decode: Decoder | None) -> None:
        """Take over ``channel``'s subscribers: each gets RESYNC once it is confirmed here."""
        if not subs:
            return
        self._wanted.setdefault(channel, set()).update(subs)
        if decode is not None:
            self._decoders.setdefault(channel, decode)
        self._resubscribed.add(channel)

    async def _reconcile(self, channel: str) -> None:
        """Make the server's subscription of ``channel`` match whether anyone wants it."""
        if self._settled(channel):
            # The usual case of a channel that others follow already. Not waiting for the
            # lock: a burst of opens would queue on it, and asyncio's Lock looks at every
            # waiter on each acquire (4 % of the API's CPU at 5,000 streams).
            return
        async with self._lock:
            ps = self._ps
            wanted = channel in self._wanted
            if ps is None or self._settled(channel):
                return
            try:
                if wanted:
                    self._confirmed.discard(channel)
                    self._pending[channel] = self._pending.get(channel, 0) + 1
                    self._requested.add(channel)
                    await (ps.ssubscribe(channel) if self.sharded else ps.subscribe(channel))
                else:
                    self._requested.discard(channel)
                    self._confirmed.discard(channel)
                    if self.sharded:
                        self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
                        await ps.sunsubscribe(channel)
                    else:
                        await ps.unsubscribe(channel)
            except Exception as exc:
                # The reader rebuilds the connection and resubscribes everything. Not only
                # RedisError/OSError: a command sent while redis-py reconnects a killed
                # connection under the reader can raise RuntimeError ("read() called while
                # another coroutine is already waiting"); it must not escape to a
                # subscriber (a worker's run would fail to start and stay queued).
                log.warning("pubsub command failed", channel=channel, error=describe(exc))
                self._broken = True

    def _settled(self, channel: str) -> bool:
        """No connection (the reconnect will subscribe what is wanted), or nothing to do."""
        return self._ps is None or (channel in self._wanted) == (channel in self._requested)

    async def _wait_confirmed(self, channel: str) -> None:
        try:
            await self._wait_for(channel, self._confirm_timeout)
        except TimeoutError:
            raise SubscribeError(
                f"subscription to {channel} not confirmed within {self._confirm_timeout}s"
            ) from None

    async def _wait_for(self, channel: str, timeout: float) -> None:
        # Plain Events rather than a Condition: a cancelled Condition waiter must
        # re-take its lock, which on Python 3.11 can leave the cancelled task stuck.
        if channel in self._confirmed:
            return  # no timer for the usual case, a channel others follow already
        async with asyncio.timeout(timeout):
            while channel not in self._confirmed:
                await self._wakeups.setdefault(channel, asyncio.Event()).wait()

    def _wake(self, channel: str | None = None) -> None:
        """Let waiters of ``channel`` (of every channel when None) look again."""
        if channel is None:
            events, self._wakeups = list(self._wakeups.values()), {}
        else:
            event = self._wakeups.pop(channel, None)
            events = [] if event is None else [event]
        for event in events:
            event.set()

    def _on_subscribed(self, channel: str) -> None:
        left = self._pending.get(channel, 0) - 1
        if left < 0:
            # A confirmation nobody asked for: redis-py reconnected and resubscribed on its
            # own, so messages may have been lost in between.
            self._resync_all()
            left = 0
        if left == 0:
            self._pending.pop(channel, None)
            if channel in self._requested:
                self._confirmed.add(channel)
            if channel in self._resubscribed:
                # Listening again: only now can a catch-up read miss nothing, because
                # whatever is published from here on reaches the subscriber.
                self._resubscribed.discard(channel)
                for sub in tuple(self._wanted.get(channel, ())):
                    sub._resync()
        else:
            self._pending[channel] = left
        self._wake(channel)

    def _on_unsubscribed(self, channel: str) -> None:
        """A sharded link's SUNSUBSCRIBE answer, or the server dropping the channel."""
        asked = self._unsubscribing.get(channel, 0)
        if asked > 1:
            self._unsubscribing[channel] = asked - 1
        elif asked == 1:
            del self._unsubscribing[channel]
        elif channel in self._requested:
            # Unasked: the slot failed over or moved. Subscribers are RESYNCed once the
            # channel is confirmed again, wherever the sharded hub places it.
            self._dropped(channel)
            self._on_trouble()

    def _on_redirect(self, exc: MovedError | AskError) -> None:
        """SSUBSCRIBE reached a node that does not own the slot: drop those channels."""
        for channel in [c for c in self._pending if key_slot(c.encode()) == exc.slot_id]:
            self._dropped(channel)
            self._pending.pop(channel, None)
        self._on_trouble()

    def _dropped(self, channel: str) -> None:
        self._requested.discard(channel)
        self._confirmed.discard(channel)
        if channel in self._wanted:
            self._resubscribed.add(channel)
        self._wake(channel)

    def _dispatch(self, channel: str, data: bytes) -> None:
        subs = self._wanted.get(channel)
        if not subs:
            return
        message: Message = data
        decode = self._decoders.get(channel)
        if decode is not None:
            try:
                message = decode(data)
            except Exception as exc:  # a bad payload must not stop the reader
                log.warning("undecodable message", channel=channel, error=describe(exc))
                message = RESYNC
        for sub in tuple(subs):
            if message is RESYNC:
                sub._resync()
            else:
                sub._deliver(message)

    def _resync_all(self) -> None:
        for subs in self._wanted.values():
            for sub in subs:
                sub._resync()

    # -- the reader -------------------------------------------------------------------

    async def _run(self) -> None:
        """Own the connection until closed: connect, read, reconnect with backoff."""
        backoff = 0.05
        while not self._closing:
            try:
                await self._connect()
                backoff = 0.05
                await self._read_until_error()
            except Exception as exc:  # the reader must outlive any failure of Redis
                self._on_trouble()  # on a cluster, the node may have lost its slots
                if self._closing:
                    pass
                elif is_budget_error(exc):  # logged as "Too many connections" and counted
                    budget_exhausted(
                        f"Too many connections: {exc}",
                        role=self._role,
                        instance=self._instance,
                        backend="pubsub",
                    )
                else:
                    log.warning(
                        "pubsub lost",
                        role=self._role,
                        instance=self._instance,
                        error=describe(exc),
                    )
            finally:
                try:
                    await finish_shielded(self._disconnect(), within_s=CLOSE_TIMEOUT_S)
                except TimeoutError:
                    log.error("pubsub close timed out", role=self._role, instance=self._instance)
            if self._closing:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _connect(self) -> None:
        async with self._lock:
            self._broken = False
            ps = self._client.pubsub()
            self._ps = ps
            private = [] if self._private is None else [self._private]
            channels = sorted({*private, *self._wanted})
            self._requested = set(channels)
            self._pending = dict.fromkeys(channels, 1)
            self._unsubscribing = {}
            self._confirmed = set()
            # Subscribers of these channels may have missed messages while disconnected:
            # each gets RESYNC once its channel is confirmed again (_on_subscribed). A
            # channel handed over by another link keeps its mark (_give).
            if self._reconnects:
                self._resubscribed = set(channels)
            else:
                self._resubscribed &= set(channels)
            self._ping_sent_at = None
            if self.sharded:
                # One SSUBSCRIBE takes the channels of one slot only.
                for group in _by_slot(channels):
                    await ps.ssubscribe(*group)
            else:
                await ps.subscribe(*channels)
            self._last_pong = time.monotonic()
        self._reconnects += 1

    async def _disconnect(self) -> None:
        async with self._lock:
            ps, self._ps = self._ps, None
            self._requested = set()
            self._pending = {}
            self._confirmed = set()
            if ps is not None:
                await ps.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        self._wake()

    async def _read_until_error(self) -> None:
        ps = self._ps
        assert ps is not None
        while not self._closing:
            if self._broken:
                raise _Stale("a command on the pub/sub connection failed")
            try:
                message = await ps.get_message(timeout=min(1.0, self._ping_interval))
            except (MovedError, AskError) as exc:  # a sharded link's SSUBSCRIBE, refused
                self._on_redirect(exc)
                continue
            if message is not None:
                self._handle(message)
            await self._watchdog(ps)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("message", "smessage"):
            self._dispatch(_text(message["channel"]), message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            self._on_subscribed(_text(message["channel"]))
        elif kind == "sunsubscribe":
            self._on_unsubscribed(_text(message["channel"]))
        elif kind == "pong":
            self._last_pong = time.monotonic()
            self._ping_sent_at = None

    async def _watchdog(self, ps: PubSub) -> None:
        """Ping on a quiet connection; a pong that never comes means a hung server or proxy."""
        now = time.monotonic()
        if self._pong_overdue(now):
            raise _Stale(f"no pong within {self._ping_interval}s")
        if not ps.subscribed:
            return  # a sharded link with no channel left: nothing to watch (and RESP2
            # answers PING outside subscribed mode in a shape the PubSub cannot parse)
        if self._ping_sent_at is None and now - (self._last_pong or now) >= self._ping_interval:
            self._ping_sent_at = now
            async with self._lock:
                await ps.ping(secrets.token_hex(4))

    def _pong_overdue(self, now: float) -> bool:
        return self._ping_sent_at is not None and now - self._ping_sent_at > self._ping_interval

    async def _close(self) -> None:
        self._closing = True
        await self._pool.aclose()


class _Stale(Exception):
    """The connection looks alive but is not answering; rebuild it."""


def _by_slot(channels: list[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@asynccontextmanager
async def open_hub(
    redis_url: str,
    *,
    role: str,
    instance: str,
    queue_size: int = 256,
    ping_interval: float = 5.0,
    confirm_timeout: float = 5.0,
) -> AsyncIterator[PubSubHub]:
    """Start a hub and its reader; on exit stop the reader, then release the connection."""
    hub = PubSubHub(
        redis_url,
        role=role,
        instance=instance,
        queue_size=queue_size,
        ping_interval=ping_interval,
        confirm_timeout=confirm_timeout,
    )
    try:
        async with helper_task(hub._run(), name=f"runstream-pubsub-{role}-{instance}"):
            try:
                yield hub
            finally:
                # The flag ends the reader's loop even if Python 3.11 loses the
                # cancellation inside redis-py's I/O; helper_task then awaits it.
                hub._closing = True
    finally:
        await finish_shielded(hub._close(), within_s=CLOSE_TIMEOUT_S)


async def publish(redis: CommandClient, channel: str, data: bytes) -> int:
    """Publish ``data`` on ``channel`` through a command connection (a sharded publish on a
    cluster, where subscribers are sharded); returns receivers."""
    if isinstance(redis, RedisCluster):
        receivers: int = await redis.spublish(channel, data)
    else:
        receivers = await redis.publish(channel, data)
    return receivers
