"""The shared pub/sub connection: one per process, reference-counted, self-healing."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from runstream.errors import SubscribeError
from runstream.streams.pubsub import RESYNC, open_hub
from runstream.streams.pubsub.hub import Subscription
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


async def test_a_subscription_waits_at_most_its_timeout_and_leaves_no_timer_behind() -> None:
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


async def test_a_full_subscription_is_emptied_and_told_to_resync() -> None:
    sub = Subscription("ch", maxsize=2)
    for message in (b"1", b"2", b"3"):
        sub._deliver(message)
    assert sub.drain() == [RESYNC] and sub.overflows == 1
