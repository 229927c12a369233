"""Following a run: listen first, read the log, merge by seq; no gap, no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from runstream.models import Event, Run, RunStatus, build_event, status_event
from runstream.streams import keys
from runstream.streams.connection import RedisErrors
from runstream.streams.eventlog import EventLog
from runstream.streams.follow import Sources, follow
from runstream.streams.pubsub import PubSubHub, open_hub

pytestmark = pytest.mark.usefixtures("no_task_leaks")
NOW = datetime(2026, 1, 1, tzinfo=UTC)

ERRORS = RedisErrors(role="test", instance="t")


def tick(seq: int) -> Event:
    return build_event({"type": "tick"}, seq, NOW, max_bytes=10_000)


class Records:
    """Run records and archives as the database would hold them (a dict of real Runs)."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.archive: dict[str, list[Event]] = {}

    async def load(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    async def read(self, run_id: str, after: int, limit: int) -> list[Event]:
        return [e for e in self.archive.get(run_id, []) if e.seq > after][:limit]


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[PubSubHub]:
    async with open_hub(redis_url, role="test", instance="follow", queue_size=8) as hub:
        yield hub


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


async def collect(run_id: str, after: int, sources: Sources) -> list[int]:
    async with contextlib.aclosing(follow(run_id, after, sources, poll_s=0.5)) as events:
        return [event.seq async for event in events]


async def test_followers_joining_at_random_points_see_every_event_once_in_order(
    hub: PubSubHub, redis: Redis
) -> None:
    log, records = EventLog(redis, ttl_s=60, errors=ERRORS), Records()
    sources = Sources(hub, log, records.load, records.read)
    total = 300
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
        records.runs["r"] = Run(
            id="r",
            principal="p",
            agent="a",
            status=RunStatus.COMPLETED,
            input={},
            completed_at=NOW,
            last_seq=total,
        )
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
    hub: PubSubHub, redis: Redis
) -> None:
    log, records = EventLog(redis, ttl_s=60, errors=ERRORS), Records()
    sources = Sources(hub, log, records.load, records.read)
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
    hub: PubSubHub, redis: Redis
) -> None:
    records = Records()
    events = [tick(1), tick(2), status_event(RunStatus.FAILED, 3, NOW, "boom")]
    records.runs["r"] = Run(
        id="r",
        principal="p",
        agent="a",
        status=RunStatus.FAILED,
        input={},
        completed_at=NOW,
        error="boom",
        last_seq=3,
    )
    records.archive["r"] = events
    sources = Sources(hub, EventLog(redis, ttl_s=60, errors=ERRORS), records.load, records.read)
    assert await collect("r", 0, sources) == [1, 2, 3]
    assert await collect("r", 3, sources) == []


async def test_terminal_event_missing_everywhere_is_rebuilt_from_the_record(
    hub: PubSubHub, redis: Redis
) -> None:
    records = Records()
    records.runs["r"] = Run(
        id="r",
        principal="p",
        agent="a",
        status=RunStatus.STOPPED,
        input={},
        completed_at=NOW,
        last_seq=5,
    )
    sources = Sources(hub, EventLog(redis, ttl_s=60, errors=ERRORS), records.load, records.read)
    async with contextlib.aclosing(follow("r", 2, sources, poll_s=0.5)) as it:
        got = [event async for event in it]
    assert [(e.type, e.seq) for e in got] == [("gap", 4), ("status", 5)]
    assert got[0].to_dict() == {"type": "gap", "from": 3, "to": 4}
    assert got[1].to_dict()["status"] == "stopped"


async def test_follower_leaving_early_releases_its_subscription(
    hub: PubSubHub, redis: Redis
) -> None:
    log, records = EventLog(redis, ttl_s=60, errors=ERRORS), Records()
    sources = Sources(hub, log, records.load, records.read)
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
    hub: PubSubHub, redis: Redis
) -> None:
    log, records = EventLog(redis, ttl_s=60, errors=ERRORS), Records()

    async def load_while_the_worker_finishes(run_id: str) -> Run | None:
        # Between the follower's (empty) log read and this record read, the worker
        # appended its last events and made the record final (it leads the stream).
        await log.append(run_id, [tick(1), tick(2)])
        return Run(
            id=run_id,
            principal="p",
            agent="a",
            status=RunStatus.COMPLETED,
            input={},
            completed_at=NOW,
            last_seq=3,
        )

    sources = Sources(hub, log, load_while_the_worker_finishes, records.read)
    async with contextlib.aclosing(follow("r", 0, sources, poll_s=0.5)) as it:
        got = [(event.type, event.seq) async for event in it]
    assert got == [("tick", 1), ("tick", 2), ("status", 3)]
