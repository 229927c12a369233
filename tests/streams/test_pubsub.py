"""The shared pub/sub connection: one per process, reference-counted, self-healing."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from redis.asyncio import Redis

from runstream.errors import SubscribeError
from runstream.streams.pubsub import RESYNC, open_hub
from runstream.streams.pubsub.hub import PubSubHub, Subscription
from tests.conftest import wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("no_task_leaks")


def hub(url: str, **kwargs: float) -> object:
    return open_hub(url, role="test", instance="hub", **kwargs)  # type: ignore[arg-type]


async def publish(url: str, channel: str, data: bytes) -> int:
    async with Redis.from_url(url) as client:
        return int(await client.publish(channel, data))


async def test_every_subscriber_shares_one_connection(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Event()
            done = asyncio.Event()
            confirmed = 0

            async def reader(channel: str) -> None:
                nonlocal confirmed
                async with h.subscribe(channel):
                    confirmed += 1
                    if confirmed == 150:
                        ready.set()
                    await done.wait()

            for i in range(50):
                for _ in range(3):
                    tg.create_task(reader(f"ch{i}"))
            await asyncio.wait_for(ready.wait(), 10)
            assert redis_server.client_names() == ["runstream:test:hub:pubsub"]
            assert len(redis_server.channels()) == 51  # 50 + the hub's private channel
            done.set()
        await wait_until(lambda: redis_server.channels() == ["runstream:hub:test:hub"])
    assert redis_server.client_names() == []
    assert redis_server.channels() == []


async def test_message_reaches_every_local_subscriber_once(redis_url: str) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        async with h.subscribe("news") as a, h.subscribe("news") as b:
            assert await publish(redis_url, "news", b"hello") == 1  # one server subscriber
            assert await asyncio.wait_for(a.get(), 5) == b"hello"
            assert await asyncio.wait_for(b.get(), 5) == b"hello"


async def test_joining_a_confirmed_channel_waits_for_no_command_in_flight(redis_url: str) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        hub = cast(PubSubHub, h)  # the single-node hub: its lock
        async with h.subscribe("news"):
            # While the hub's lock is held (a command on another channel, a reconnect),
            # a burst of readers joining "news" does not queue behind it.
            async with hub._lock:
                async with asyncio.timeout(5):
                    async with h.subscribe("news") as joined, h.subscribe("news"):
                        assert await publish(redis_url, "news", b"hi") == 1
                        assert await joined.get() == b"hi"


async def test_last_subscriber_leaving_unsubscribes_on_server(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        async with h.subscribe("a"):
            async with h.subscribe("a"):
                pass
            assert "a" in redis_server.channels()
        await wait_until(lambda: "a" not in redis_server.channels())


async def test_slow_subscriber_is_told_to_resync_instead_of_growing(redis_url: str) -> None:
    async with open_hub(redis_url, role="test", instance="hub", queue_size=4) as h:
        async with h.subscribe("fast") as fast, h.subscribe("fast") as slow:
            for i in range(10):
                await publish(redis_url, "fast", str(i).encode())
                assert await asyncio.wait_for(fast.get(), 5) == str(i).encode()
            # The slow one never read: its queue holds at most 4, ending with a RESYNC.
            first = await asyncio.wait_for(slow.get(), 5)
            assert slow.overflows >= 1
            items = [first]
            while len(slow):
                items.append(await slow.get())
            assert len(items) <= 4
            assert RESYNC in items


async def test_killed_connection_is_rebuilt_and_subscribers_resync(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        async with h.subscribe("live") as sub:
            with redis_server.admin() as admin:
                admin.client_kill_filter(_type="pubsub")
            assert await asyncio.wait_for(sub.get(), 10) is RESYNC
            await wait_until(lambda: h.healthy and "live" in redis_server.channels())
            await publish(redis_url, "live", b"after")
            assert await asyncio.wait_for(sub.get(), 5) == b"after"
            assert redis_server.client_names() == ["runstream:test:hub:pubsub"]
    assert redis_server.client_names() == []


async def test_subscribe_fails_clearly_while_redis_is_down_and_recovers(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_hub(redis_url, role="test", instance="hub", confirm_timeout=0.5) as h:
        assert await h.wait_connected(5)
        redis_server.stop()
        await wait_until(lambda: not h.healthy)
        with pytest.raises(SubscribeError):
            async with h.subscribe("x"):
                pass
        assert h.stats().channels == 0
        redis_server.start()
        assert await h.wait_connected(10)
        async with h.subscribe("x") as sub:
            await publish(redis_url, "x", b"back")
            assert await asyncio.wait_for(sub.get(), 5) == b"back"
    assert redis_server.client_names() == []


async def test_restarted_server_gets_every_wanted_channel_back(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with open_hub(redis_url, role="test", instance="hub") as h:
        async with h.subscribe("one") as one, h.subscribe("two"):
            redis_server.restart()
            assert await asyncio.wait_for(one.get(), 10) is RESYNC
            await wait_until(lambda: {"one", "two"} <= set(redis_server.channels()))


async def test_hub_never_opens_a_second_connection(
    redis_url: str, redis_server: RedisServer
) -> None:
    names: list[list[str]] = []
    async with open_hub(redis_url, role="test", instance="hub") as h:
        assert await h.wait_connected(5)

        async def subscriber(n: int) -> None:
            async with h.subscribe(f"channel-{n % 7}"):
                names.append(redis_server.client_names())

        async with asyncio.TaskGroup() as tg:  # 50 first and later subscribers at once
            for n in range(50):
                tg.create_task(subscriber(n))
        names.append(redis_server.client_names())
    assert len(names) == 51
    assert all(seen == ["runstream:test:hub:pubsub"] for seen in names), names


async def test_a_subscription_waits_at_most_its_timeout_and_stops_its_timer() -> None:
    sub = Subscription("ch", maxsize=4)
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.05)
    sub._deliver(b"one")
    assert await sub.get(timeout=0.05) == b"one"  # waiting items come without a wait

    loop = asyncio.get_running_loop()
    getting = asyncio.create_task(sub.get(timeout=30))
    await wait_until(lambda: sub._waiter is not None)
    loop.call_soon(sub._deliver, b"two")
    assert await getting == b"two"  # woken by the message, before its timeout
    assert sub._waiter is None

    cancelled = asyncio.create_task(sub.get(timeout=30))
    await wait_until(lambda: sub._waiter is not None)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert sub._waiter is None
    sub._deliver(b"three")  # delivered after the cancel: kept for the next get
    assert sub.drain() == [b"three"]
    sub.stop_timer()
    assert sub._timer is None


async def test_a_busy_subscription_arms_one_timer_and_still_times_out_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, asyncio.BaseEventLoop)  # its call_later goes through call_at
    timers = 0
    call_at = loop.call_at

    def counted(*args: object, **kwargs: object) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counted)
    sub = Subscription("ch", maxsize=4)
    for n in range(100):  # a reader waiting for each of 100 messages, as a busy stream's
        loop.call_soon(sub._deliver, b"%d" % n)
        assert await sub.get(timeout=30) == b"%d" % n
    assert timers == 1  # a timer set and cancelled per get() was 100
    loop.call_later(0.1, sub._deliver, b"late")
    assert await sub.get(timeout=0.2) == b"late"  # an earlier deadline: the timer re-set
    # That timer fires at the last get's deadline, before this get's: it re-arms for it,
    # so the quiet wait lasts its whole timeout, then ends.
    started = loop.time()
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.2)
    assert loop.time() - started >= 0.19
    sub.stop_timer()


async def test_a_full_subscription_is_emptied_and_told_to_resync() -> None:
    sub = Subscription("ch", maxsize=2)
    for message in (b"1", b"2", b"3"):
        sub._deliver(message)
    assert sub.drain() == [RESYNC] and sub.overflows == 1
