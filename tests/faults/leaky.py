"""The original system's subscription pattern, with the seed's bugs switched on one at a time.

runstream shares one pub/sub connection per process (``PubSubHub``). The system of the
incident gave every subscriber its own PubSub from a shared pool and a listener task.
:class:`SeedSubscriptions` re-creates that pattern; with ``bug=None`` it has the seed's
five fixes and one thing more: its clean-up is shielded as a whole (see ``subscribe``),
because the cancellation of an SSE response is delivered again at every await and the
five fixes alone would skip the close. Each ``bug`` puts one finding back:

- ``"F1"``: a failed subscribe re-raises without closing the PubSub;
- ``"F2"``: the PubSub is closed with the deprecated ``close()``;
- ``"F3"``: clean-up awaits other calls first, which can raise, and closes last;
- ``"F4"``: an exception handler closes the PubSub with ``close()``;
- ``"F5"``: the listener task is cancelled and never awaited.

Installed over ``PubSubHub.subscribe`` by a test fixture, it lets each regression test
show that it fails against the bug it guards against.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from runstream.streams.connection import connection_kwargs
from runstream.streams.keys import client_name
from runstream.streams.pubsub import Decoder, PubSubHub, Subscription

BUGS = ("F1", "F2", "F3", "F4", "F5")


class SeedSubscriptions:
    """Per-subscriber PubSubs from one shared pool per process, as in the incident."""

    def __init__(self, bug: str | None) -> None:
        assert bug is None or bug in BUGS
        self.bug = bug
        self.clients: dict[int, Redis] = {}
        self.listeners: dict[int, set[asyncio.Future[None]]] = {}  # by hub

    def client_for(self, hub: PubSubHub) -> Redis:
        if id(hub) not in self.clients:
            name = client_name(hub._role, hub._instance, "pubsub")
            kwargs = connection_kwargs(_url_of(hub), name)
            # No retries, as in the incident's pool: when the fixture closes this pool
            # under a listener, the listener ends instead of reconnecting (and then, on
            # Python 3.11, possibly losing the one cancellation the pattern sends it).
            kwargs["retry"] = Retry(NoBackoff(), 0)
            pool = BlockingConnectionPool(max_connections=50, timeout=2, **kwargs)
            self.clients[id(hub)] = Redis(connection_pool=pool)
        return self.clients[id(hub)]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seed = self

        @contextlib.asynccontextmanager
        async def subscribe(
            hub: PubSubHub, channel: str, decode: Decoder | None = None
        ) -> AsyncIterator[Subscription]:
            async with seed.subscribe(hub, channel, decode) as sub:
                yield sub

        monkeypatch.setattr(PubSubHub, "subscribe", subscribe)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.connection_pool.aclose()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, hub: PubSubHub, channel: str, decode: Decoder | None = None
    ) -> AsyncIterator[Subscription]:
        ps = self.client_for(hub).pubsub()
        try:
            await ps.subscribe(channel)
        except Exception:
            if self.bug != "F1":
                await ps.aclose()
            raise
        sub = Subscription(channel, hub._queue_size)
        listener = asyncio.ensure_future(_listen(ps, sub, decode))
        listeners = self.listeners.setdefault(id(hub), set())
        listeners.add(listener)
        listener.add_done_callback(listeners.discard)
        try:
            yield sub
        except Exception:
            if self.bug == "F4":
                await ps.close()  # deprecated alias
            raise
        finally:
            if self.bug == "F5":
                # Cancel the listener and leave without awaiting it: it outlives the
                # stream, and its PubSub is closed whenever it happens to finish.
                listener.add_done_callback(
                    lambda _: _closing.add(asyncio.ensure_future(ps.aclose()))
                )
                listener.cancel()
            elif self.bug == "F3":
                # The seed's finally, unshielded: other awaits first, the close last.
                await self._clean_up(ps, listener, channel)
            else:
                # Shielded as a whole: the seed's five fixes are not enough where the
                # cancellation is delivered again at every await (an AnyIO cancel scope,
                # as Starlette and AnyIO middleware use): the await on the listener raises
                # and the close after it never runs.
                await asyncio.shield(self._clean_up(ps, listener, channel))

    async def _clean_up(self, ps: PubSub, listener: asyncio.Future[None], channel: str) -> None:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        if self.bug == "F3":
            await ps.unsubscribe(channel)  # may raise (a dead connection, a cancellation)
            await ps.aclose()
        elif self.bug == "F2":
            await ps.close()  # deprecated alias
        else:
            await ps.aclose()


_closing: set[asyncio.Future[None]] = set()  # F5's late closes, kept from the GC


async def _listen(ps: PubSub, sub: Subscription, decode: Decoder | None) -> None:
    try:
        async for message in ps.listen():
            if message["type"] == "message":
                data = message["data"]
                sub._deliver(data if decode is None else decode(data))
    except Exception:
        sub._resync()  # the follower reads the log; this listener is done


def _url_of(hub: PubSubHub) -> str:
    kwargs: dict[str, Any] = hub._pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
