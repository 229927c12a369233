"""The run log: append-and-notify in one round trip, idempotent, read by seq."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from runstream.models import PAGE_BYTES, Event, RunStatus, build_event, is_last_page, status_event
from runstream.streams import keys
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import REFUSED, EventLog, Fence, decode_notification
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


async def test_an_append_whose_fence_is_not_the_lock_is_refused(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    run = "fenced-run"
    mine, theirs = Fence("wk1:aaa", 5000), Fence("wk2:bbb", 5000)
    await redis.set(keys.run_lock(run), mine.token, px=5000)
    assert await log.append(run, [ev(1)], mine) == 1
    await redis.set(keys.run_lock(run), theirs.token, px=5000)  # another worker took it
    assert await log.append(run, [ev(2)], mine) == REFUSED
    assert await log.append_many([(run, [ev(2)], mine), ("other-run", [ev(1)], None)]) == [
        REFUSED,
        1,
    ]
    assert [e.seq for e in await log.read(run, 0)] == [1]  # nothing of the old owner landed
    assert await log.append(run, [ev(2)], theirs) == 1


async def test_a_fenced_append_takes_back_a_lock_redis_lost(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    run = "lost-lock-run"
    fence = Fence("wk1:ccc", 5000)
    assert await redis.get(keys.run_lock(run)) is None  # as after a restart without persistence
    assert await log.append(run, [ev(1)], fence) == 1
    assert await redis.get(keys.run_lock(run)) == fence.token.encode()
    assert 0 < await redis.pttl(keys.run_lock(run)) <= 5000


async def test_pages_are_bounded_by_bytes_as_well_as_by_count(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    run = "big-events-run"
    big = [build_event({"type": "blob", "x": "y" * 300_000}, n, NOW, 10**6) for n in range(1, 11)]
    await log.append(run, big)
    first = await log.read(run, 0, 500)
    assert [e.seq for e in first] == [1, 2, 3, 4]  # stops once it holds PAGE_BYTES
    assert sum(len(e.data) for e in first) < PAGE_BYTES + 300_100
    assert not is_last_page(first, 500)
    rest = await log.read(run, 4, 500)
    assert [e.seq for e in rest] == [5, 6, 7, 8]
    tail = await log.read(run, 8, 500)
    assert [e.seq for e in tail] == [9, 10] and is_last_page(tail, 500)
    small = [ev(n) for n in range(11, 111)]
    await log.append(run, small)
    assert [e.seq for e in await log.read(run, 10, 30)] == list(range(11, 41))


async def test_nothing_lands_after_the_terminal_event_even_with_the_lock_gone(
    redis: Redis,
) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    run = "ended-run"
    zombie = Fence("wk1:zombie", 5000)
    terminal = status_event(RunStatus.FAILED, 2, NOW, "worker lost")
    assert await log.append(run, [ev(1), terminal]) == 2  # ended by the sweeper, unfenced
    assert await redis.get(keys.run_lock(run)) is None  # its lock released
    assert await log.append(run, [ev(3)], zombie) == REFUSED
    assert await redis.get(keys.run_lock(run)) is None  # the zombie did not take it back
    assert await log.append(run, [terminal]) == 0  # a retried ending is still a no-op
    assert [e.seq for e in await log.read(run, 0)] == [1, 2]


async def command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


async def test_a_batch_of_appends_is_one_pipeline_without_a_script_check(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    await log.append("warm", [ev(1)])  # the script is loaded now
    await redis.config_resetstat()
    batches = [(f"r{i}", [ev(1), ev(2)], None) for i in range(3)]
    assert await log.append_many(batches) == [2, 2, 2]
    calls = await command_calls(redis)
    # redis-py's own pipeline sends SCRIPT EXISTS before every batch: a second round trip.
    assert "script|exists" not in calls and "script|load" not in calls, calls
    assert calls["evalsha"] == 3


async def test_a_batch_of_appends_survives_a_flushed_script_cache(redis: Redis) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    await log.append("warm", [ev(1)])
    await redis.script_flush()  # as after a restart: Redis answers NOSCRIPT
    assert await log.append_many([("r1", [ev(1)], None), ("r2", [ev(1), ev(2)], None)]) == [1, 2]
    assert [e.seq for e in await log.read("r2", 0)] == [1, 2]
    assert await log.append_many([("r1", [ev(2)], None)]) == [1]
