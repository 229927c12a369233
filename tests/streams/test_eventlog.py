"""The run log: append-and-notify in one round trip, idempotent, read by seq."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from runstream.models import Event, build_event
from runstream.streams import keys
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import EventLog, decode_notification
from runstream.streams.pubsub import open_hub

NOW = datetime(2026, 1, 1, tzinfo=UTC)

ERRORS = RedisErrors(role="test", instance="t")


def ev(seq: int, **extra: object) -> Event:
    return build_event({"type": "tick", **extra}, seq, NOW, max_bytes=10_000)


@pytest.fixture
async def redis(redis_url: str):  # type: ignore[no-untyped-def]
    async with Redis.from_url(redis_url) as client:
        yield client


async def test_append_then_read_after_a_cursor(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    assert await log.append("r1", [ev(1), ev(2), ev(3)]) == 3
    assert [e.seq for e in await log.read("r1", 0)] == [1, 2, 3]
    assert [e.seq for e in await log.read("r1", 2)] == [3]
    assert await log.read("r1", 3) == []
    assert await log.last_seq("r1") == 3 and await log.last_seq("nope") is None


async def test_append_is_idempotent_and_never_goes_back(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    await log.append("r1", [ev(1), ev(2)])
    assert await log.append("r1", [ev(1), ev(2)]) == 0  # a retried call adds nothing
    assert await log.append("r1", [ev(2), ev(3)]) == 1
    assert [e.seq for e in await log.read("r1", 0)] == [1, 2, 3]


async def test_append_sets_the_log_ttl(redis: Redis) -> None:
    await EventLog(redis, ttl_s=60, errors=ERRORS).append("r1", [ev(1)])
    assert 0 < await redis.ttl(keys.run_events("r1")) <= 60


async def test_append_notifies_with_seq_type_and_data(redis_url: str, redis: Redis) -> None:
    async with open_hub(redis_url, role="test", instance="log") as hub:
        async with hub.subscribe(keys.run_notify("r1")) as sub:
            await EventLog(redis, ttl_s=60, errors=ERRORS).append("r1", [ev(1, n=1), ev(2, n=2)])
            first = decode_notification(await asyncio.wait_for(sub.get(), 5))  # type: ignore[arg-type]
            second = decode_notification(await asyncio.wait_for(sub.get(), 5))  # type: ignore[arg-type]
    assert (first.seq, first.type, first.to_dict()["n"]) == (1, "tick", 1)
    assert second == ev(2, n=2)


async def test_script_survives_a_restarted_server(redis_server, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    async with Redis.from_url(redis_url) as client:
        log = EventLog(client, ttl_s=60, errors=ERRORS)
        await log.append("r1", [ev(1)])
        redis_server.restart()  # the server forgets its scripts and its data
        await asyncio.sleep(0)
        for _ in range(3):  # the pooled connection died with the server: one retry replaces it
            try:
                await log.append("r1", [ev(5)])
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert [e.seq for e in await log.read("r1", 0)] == [5]
