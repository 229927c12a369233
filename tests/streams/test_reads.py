"""Shared reads: one read per run and range, in turn, whatever the number of readers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from runstream.models import Event, RunStatus, build_event, status_event
from runstream.store.database import open_store
from runstream.store.repository import RunStore
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import EventLog
from runstream.streams.follow import Sources, follow
from runstream.streams.frames import Frame
from runstream.streams.pubsub import open_hub
from runstream.streams.reads import SharedReads
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_task_leaks")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ERRORS = RedisErrors(role="test", instance="t")


def tick(seq: int) -> Event:
    return build_event({"type": "tick"}, seq, NOW, max_bytes=10_000)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[RunStore]:
    async with open_store(sqlite_url) as store:
        yield store


@pytest.fixture
async def reads(redis: Redis, store: RunStore) -> AsyncIterator[SharedReads]:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    async with SharedReads(
        log=log,
        load_run=store.get_run,
        read_archive=store.read_events,
        log_gate=asyncio.Semaphore(1),
        db_gate=1,
        fresh_s=30,
    ) as reads:
        yield reads


async def server_calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


async def test_concurrent_reads_of_one_range_cost_one_redis_read(
    redis: Redis, reads: SharedReads
) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    await log.append("r", [tick(s) for s in range(1, 21)])
    await log.read("warm-up", 0)  # the read script is loaded: each read is one EVALSHA now
    before = await server_calls(redis, "evalsha")
    pages = await asyncio.gather(*(reads.log_page("r", 0, 500) for _ in range(200)))
    assert await server_calls(redis, "evalsha") - before == 1
    assert all([f.seq for f in page] == list(range(1, 21)) for page in pages)
    # Every reader got the very same frames: each event was encoded once.
    assert all(page[0] is pages[0][0] for page in pages)


async def test_a_reader_that_leaves_does_not_cancel_the_read_others_wait_for(
    redis: Redis, reads: SharedReads
) -> None:
    await EventLog(redis, ttl_s=60, errors=ERRORS).append("r", [tick(1)])
    leaving = asyncio.ensure_future(reads.log_page("r", 0, 500))
    staying = asyncio.ensure_future(reads.log_page("r", 0, 500))
    await asyncio.sleep(0)  # both joined the same flight
    leaving.cancel()
    assert [f.seq for f in await staying] == [1]
    with contextlib.suppress(asyncio.CancelledError):
        await leaving


async def test_a_silent_run_polled_by_many_readers_is_read_once_per_fresh_period(
    redis: Redis, reads: SharedReads
) -> None:
    await EventLog(redis, ttl_s=60, errors=ERRORS).append("r", [tick(1)])
    assert [f.seq for f in await reads.log_page("r", 0, 500)] == [1]
    before = await server_calls(redis, "evalsha")
    for _ in range(100):  # readers at the end whose poll timers fire one after another
        assert await reads.log_page("r", 1, 500, poll=True) == []
    assert await server_calls(redis, "evalsha") == before
    # A read that is not a poll (a skipped seq, a resync) always goes to Redis.
    assert await reads.log_page("r", 1, 500) == []
    assert await server_calls(redis, "evalsha") == before + 1


async def test_a_runs_owner_and_final_record_are_read_once(
    store: RunStore, reads: SharedReads
) -> None:
    await store.create_run(
        run_id="r",
        principal="alice",
        agent="echo",
        input={},
        thread_id=None,
        metadata={},
        idempotency_key=None,
        created_at=NOW,
    )
    owners = await asyncio.gather(*(reads.owner("r") for _ in range(100)))
    assert set(owners) == {"alice"} and reads.database_reads == 1
    assert await reads.owner("missing") is None
    await store.finish_run(
        "r",
        status=RunStatus.COMPLETED,
        error=None,
        last_seq=1,
        completed_at=NOW,
        from_statuses=(RunStatus.QUEUED,),
    )
    first = await reads.record("r")  # not final when last read: read again
    assert first is not None and first.status is RunStatus.COMPLETED
    count = reads.database_reads
    for _ in range(10):
        assert await reads.record("r") is first
    assert reads.database_reads == count


async def test_followers_of_one_run_get_the_same_frame_from_one_notification(
    redis_url: str, redis: Redis, reads: SharedReads
) -> None:
    log = EventLog(redis, ttl_s=60, errors=ERRORS)
    await log.append("r", [tick(1)])
    seen: list[list[Frame]] = [[] for _ in range(5)]
    async with open_hub(redis_url, role="test", instance="frames") as hub:
        sources = Sources(hub=hub, reads=reads)

        async def collect(into: list[Frame]) -> None:
            async with contextlib.aclosing(follow("r", 0, sources, poll_s=30)) as it:
                async for frame in it:
                    into.append(frame)

        async with asyncio.TaskGroup() as tg:
            for into in seen:
                tg.create_task(collect(into))
            await wait_until(lambda: all(len(got) == 1 for got in seen))  # caught up, live
            await log.append("r", [status_event(RunStatus.COMPLETED, 2, NOW)])
    assert all([f.seq for f in got] == [1, 2] for got in seen)
    assert all(got[1] is seen[0][1] for got in seen)  # one decode for every reader
