"""Following a run: listen first, read the log, merge by seq; no gap, no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from runstream.models import Event, Run, RunStatus, build_event, status_event
from runstream.store.database import open_store
from runstream.store.repository import RunStore
from runstream.streams import keys
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import EventLog
from runstream.streams.follow import Sources, follow
from runstream.streams.pubsub import PubSubHub, open_hub
from runstream.streams.reads import LoadRun, SharedReads

pytestmark = pytest.mark.usefixtures("no_task_leaks")
NOW = datetime(2026, 1, 1, tzinfo=UTC)

ERRORS = RedisErrors(role="test", instance="t")


def tick(seq: int) -> Event:
    return build_event({"type": "tick"}, seq, NOW, max_bytes=10_000)


class Records:
    """Run records and archives in a real SQLite store, written as the service writes them."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    async def queued(self, run_id: str) -> None:
        await self.store.create_run(
            run_id=run_id,
            principal="p",
            agent="a",
            input={},
            thread_id=None,
            metadata={},
            idempotency_key=None,
            created_at=NOW,
        )

    async def final(
        self,
        run_id: str,
        status: RunStatus,
        last_seq: int,
        *,
        error: str | None = None,
        archive: Sequence[Event] = (),
    ) -> None:
        if await self.store.get_run(run_id) is None:
            await self.queued(run_id)
        await self.store.finish_run(
            run_id,
            status=status,
            error=error,
            last_seq=last_seq,
            completed_at=NOW,
            from_statuses=(RunStatus.QUEUED,),
        )
        await self.store.archive_events(run_id, archive)


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[PubSubHub]:
    async with open_hub(redis_url, role="test", instance="follow", queue_size=8) as hub:
        yield hub


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def log(redis: Redis) -> EventLog:
    return EventLog(redis, ttl_s=60, errors=ERRORS)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[RunStore]:
    async with open_store(sqlite_url) as store:
        yield store


@pytest.fixture
def records(store: RunStore) -> Records:
    return Records(store)


@asynccontextmanager
async def shared_sources(
    hub: PubSubHub, log: EventLog, store: RunStore, load_run: LoadRun | None = None
) -> AsyncIterator[Sources]:
    async with SharedReads(
        log=log,
        load_run=load_run or store.get_run,
        read_archive=store.read_events,
        log_gate=asyncio.Semaphore(4),
        db_gate=2,
        fresh_s=0.25,
    ) as reads:
        yield Sources(hub=hub, reads=reads)


@pytest.fixture
async def sources(hub: PubSubHub, log: EventLog, store: RunStore) -> AsyncIterator[Sources]:
    async with shared_sources(hub, log, store) as sources:
        yield sources


async def collect(run_id: str, after: int, sources: Sources) -> list[int]:
    async with contextlib.aclosing(follow(run_id, after, sources, poll_s=0.5)) as events:
        return [event.seq async for event in events]


async def test_followers_joining_at_random_points_see_every_event_once_in_order(
    log: EventLog, records: Records, sources: Sources
) -> None:
    total = 300
    await records.queued("r")
    rng = random.Random(7)

    async def writer() -> None:
        seq = 0
        while seq < total - 1:
            batch = [tick(s) for s in range(seq + 1, min(seq + rng.randint(1, 4), total - 1) + 1)]
            await log.append("r", batch)
            seq = batch[-1].seq
            if rng.random() < 0.3:
                await asyncio.sleep(0.001)
        # The record leads the stream: final before the terminal event is appended.
        await records.final("r", RunStatus.COMPLETED, total)
        await log.append("r", [status_event(RunStatus.COMPLETED, total, NOW)])

    async def late_follower() -> tuple[int, list[int]]:
        # Some join after the run ended, with a cursor at its very end: they get nothing
        # and must still be told it is over (by the record), not wait forever.
        await asyncio.sleep(rng.random() * 0.3)
        after = max(0, (await log.last_seq("r") or 0) - rng.randint(0, 5))
        return after, await collect("r", after, sources)

    async with asyncio.TaskGroup() as tg:
        followers = [tg.create_task(late_follower()) for _ in range(40)]
        tg.create_task(writer())
    for task in followers:
        after, seen = task.result()
        assert seen == list(range(after + 1, total + 1))


async def test_slow_follower_falls_back_to_the_log_and_misses_nothing(
    log: EventLog, sources: Sources
) -> None:
    seen: list[int] = []
    async with contextlib.aclosing(follow("r", 0, sources, poll_s=0.5)) as events:
        await log.append("r", [tick(1)])
        seen.append((await anext(events)).seq)
        # 100 notifications arrive while the reader is busy: its queue holds 8.
        for seq in range(2, 102):
            await log.append("r", [tick(seq)])
        await log.append("r", [status_event(RunStatus.COMPLETED, 102, NOW)])
        seen += [event.seq async for event in events]
    assert seen == list(range(1, 103))


async def test_finished_run_without_redis_log_is_replayed_from_the_archive(
    records: Records, sources: Sources
) -> None:
    events = [tick(1), tick(2), status_event(RunStatus.FAILED, 3, NOW, "boom")]
    await records.final("r", RunStatus.FAILED, 3, error="boom", archive=events)
    assert await collect("r", 0, sources) == [1, 2, 3]
    assert await collect("r", 3, sources) == []


async def test_terminal_event_missing_everywhere_is_rebuilt_from_the_record(
    records: Records, sources: Sources
) -> None:
    await records.final("r", RunStatus.STOPPED, 5)
    async with contextlib.aclosing(follow("r", 2, sources, poll_s=0.5)) as it:
        got = [frame.event async for frame in it]
    assert [(e.type, e.seq) for e in got] == [("gap", 4), ("status", 5)]
    assert got[0].to_dict() == {"type": "gap", "from": 3, "to": 4}
    assert got[1].to_dict()["status"] == "stopped"


async def test_follower_leaving_early_releases_its_subscription(
    hub: PubSubHub, redis: Redis, log: EventLog, sources: Sources
) -> None:
    await log.append("r", [tick(1), tick(2)])
    async with contextlib.aclosing(follow("r", 0, sources)) as events:
        assert (await anext(events)).seq == 1
        assert hub.stats().subscribers == 1
    assert hub.stats().subscribers == 0 and hub.stats().channels == 0
    async with asyncio.timeout(5):  # the server lets go of the channel too
        while await redis.pubsub_numsub(keys.run_notify("r")) != [
            (keys.run_notify("r").encode(), 0)
        ]:
            await asyncio.sleep(0.01)


async def test_record_turning_final_after_the_log_read_is_not_a_gap(
    hub: PubSubHub, log: EventLog, store: RunStore, records: Records
) -> None:
    await records.queued("r")

    async def load_while_the_worker_finishes(run_id: str) -> Run | None:
        # Between the follower's (empty) log read and this record read, the worker
        # appended its last events and made the record final (it leads the stream).
        await log.append(run_id, [tick(1), tick(2)])
        await records.final(run_id, RunStatus.COMPLETED, 3)
        return await store.get_run(run_id)

    async with (
        shared_sources(hub, log, store, load_while_the_worker_finishes) as sources,
        contextlib.aclosing(follow("r", 0, sources, poll_s=0.5)) as it,
    ):
        got = [(frame.event.type, frame.seq) async for frame in it]
    assert got == [("tick", 1), ("tick", 2), ("status", 3)]
