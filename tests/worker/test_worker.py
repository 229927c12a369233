"""Workers: one execution per run, bad agents, shutdown, lost workers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from runstream import service
from runstream.metrics import REGISTRY
from runstream.models import RunStatus, utcnow
from runstream.queue import open_queue
from runstream.resources import open_commands
from runstream.store.database import open_store
from runstream.store.repository import RunStore
from runstream.streams.connection import RedisErrors
from runstream.streams.control import RunControl
from runstream.streams.eventlog import EventLog
from runstream.streams.pubsub import Decoder, PubSubHub
from tests.api.streaming import read_stream, start
from tests.conftest import wait_until
from tests.system import make_settings, running_worker

AGENTS = ",".join(
    f"{name}=tests.worker.sample_agents:{name}"
    for name in ("not_an_object", "no_type", "too_big", "not_json")
)

ERRORS = RedisErrors(role="test", instance="t")


def sweeps(instance: str) -> float:
    labels = {"role": "worker", "instance": instance}
    return REGISTRY.get_sample_value("runstream_sweeps_total", labels) or 0.0


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    return {"agents": AGENTS}


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ("not_an_object", "expected a JSON object"),
        ("no_type", "string 'type'"),
        ("too_big", "over the limit of 4096"),
        ("not_json", "not JSON"),
    ],
)
async def test_agent_yielding_a_bad_event_fails_its_run_with_a_clear_error(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str, agent: str, message: str
) -> None:
    settings = make_settings(
        redis_url, sqlite_url, instance="w", agents=AGENTS, max_event_bytes=4096
    )
    async with running_worker(settings):
        run_id = await start(client, agent)
        events = await read_stream(client, run_id)
    final = events[-1]["data"]
    assert final["status"] == "failed" and message in final["error"]
    assert (await client.get(f"/runs/{run_id}")).json()["error"] == final["error"]


async def test_run_delivered_twice_executes_once(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="w")
    run_id = await start(client, "scripted", count=3)
    extra = make_settings(redis_url, sqlite_url, instance="extra")
    async with (
        open_commands(extra, role="api") as redis,
        open_queue(extra, role="api", redis=redis) as q,
    ):
        for _ in range(3):
            await q.enqueue(run_id)
    async with (
        running_worker(settings),
        running_worker(make_settings(redis_url, sqlite_url, instance="w2")),
    ):
        events = await read_stream(client, run_id)
    assert [int(e["id"]) for e in events] == [1, 2, 3, 4, 5]
    assert sum(1 for e in events if e["data"].get("status") == "running") == 1


async def test_worker_shutdown_stops_running_runs_after_the_grace(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="w", shutdown_grace_s=0.5)
    async with running_worker(settings) as worker:
        hanging = await start(client, "scripted", count=1, hang=True)
        stubborn = await start(client, "scripted", count=1, hang=True, ignore_stop=True)
        for run_id in (hanging, stubborn):
            async with asyncio.timeout(10):
                while (await client.get(f"/runs/{run_id}")).json()["status"] != "running":
                    await asyncio.sleep(0.02)
        await asyncio.wait_for(worker.stop(), 15)
    for run_id in (hanging, stubborn):
        run = (await client.get(f"/runs/{run_id}")).json()
        assert (run["status"], run["error"]) == ("stopped", "worker shut down")
        events = await read_stream(client, run_id)
        assert events[-1]["data"] == {
            **events[-1]["data"],
            "status": "stopped",
            "error": "worker shut down",
        }


async def test_run_of_a_vanished_worker_fails_as_worker_lost(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="w", worker_lost_s=1.5)
    run_id = await start(client, "scripted", count=1)
    # What a SIGKILLed worker leaves behind: the record says running, nobody holds the lock.
    async with open_store(sqlite_url) as store:
        await store.mark_running(run_id, utcnow())
    async with running_worker(settings):
        events = await asyncio.wait_for(read_stream(client, run_id), 15)
    assert events[-1]["data"]["status"] == "failed"
    assert events[-1]["data"]["error"] == "worker lost"
    assert (await client.get(f"/runs/{run_id}")).json()["error"] == "worker lost"


async def test_live_run_is_not_taken_for_lost_while_its_lock_is_held(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str
) -> None:
    from redis.asyncio import Redis

    settings = make_settings(redis_url, sqlite_url, instance="w", worker_lost_s=1.5)
    run_id = await start(client, "scripted", count=1)
    async with open_store(sqlite_url) as store:
        await store.mark_running(run_id, utcnow())
    async with Redis.from_url(redis_url) as redis:
        control = RunControl(redis, stop_ttl_s=60, errors=ERRORS)
        assert await control.acquire(run_id, "someone-alive", 30)
        before = sweeps("w")  # the counter is the process's: other tests' rounds included
        async with running_worker(settings):
            # Four rounds span more than a third of WORKER_LOST_S with the lock seen held.
            await wait_until(lambda: sweeps("w") >= before + 4, timeout=10)
            assert (await client.get(f"/runs/{run_id}")).json()["status"] == RunStatus.RUNNING
        await control.release(run_id, "someone-alive")


def worker_counter(name: str, instance: str) -> float:
    labels = {"role": "worker", "instance": instance}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_events_yielded_during_an_append_go_together_in_the_next_round_trip(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str
) -> None:
    trips = worker_counter("runstream_append_round_trips_total", "batch")
    appended = worker_counter("runstream_events_appended_total", "batch")
    async with running_worker(make_settings(redis_url, sqlite_url, instance="batch")):
        run_id = await start(client, "scripted", count=500, interval_ms=0)
        events = await read_stream(client, run_id)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    events_sent = worker_counter("runstream_events_appended_total", "batch") - appended
    round_trips = worker_counter("runstream_append_round_trips_total", "batch") - trips
    assert events_sent == len(events)
    # An agent that never waits is always ahead of the append in flight.
    assert round_trips <= events_sent / 2


async def test_an_unexpected_error_before_a_run_starts_is_retried_not_stranded(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the soak once met: redis-py raised RuntimeError from a pub/sub command while it
    # reconnected. The queue must deliver the run again, not record it failed for good.
    real = PubSubHub.subscribe
    failures = []

    def failing_once(hub: PubSubHub, channel: str, decode: Decoder | None = None) -> Any:
        if ":control" in channel and not failures:
            failures.append(channel)
            raise RuntimeError("read() called while another coroutine is already waiting")
        return real(hub, channel, decode)

    monkeypatch.setattr(PubSubHub, "subscribe", failing_once)
    # The sweeper's own rescue of old queued runs comes far too late to matter here.
    settings = make_settings(redis_url, sqlite_url, instance="w", worker_lost_s=120)
    async with running_worker(settings):
        run_id = await start(client, "echo", text="hello")
        async with asyncio.timeout(15):
            events = await read_stream(client, run_id)
    assert failures and events[-1]["data"]["status"] == "completed"


async def archived_count(sqlite_url: str, run_id: str) -> int:
    async with open_store(sqlite_url) as store:
        return len(await store.read_events(run_id, 0, 10_000))


async def archived_and_logged(
    redis_url: str, sqlite_url: str, run_id: str
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    async with open_store(sqlite_url) as store:
        archived = await store.read_events(run_id, 0, 10_000)
    async with Redis.from_url(redis_url) as redis:
        logged = await EventLog(redis, ttl_s=60, errors=ERRORS).read(run_id, 0, 10_000)
    return [(e.seq, e.data) for e in archived], [(e.seq, e.data) for e in logged]


@pytest.mark.parametrize("kept_bytes", [service.KEPT_BYTES, 100], ids=["kept", "too-big"])
async def test_a_run_is_archived_as_logged_from_memory_unless_too_big_to_keep(
    client: httpx.AsyncClient,
    redis_url: str,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    kept_bytes: int,
) -> None:
    monkeypatch.setattr(service, "KEPT_BYTES", kept_bytes)
    log_reads: list[str] = []
    real_read = EventLog.read

    async def counted(self: EventLog, run_id: str, after: int, limit: int = 500) -> Any:
        log_reads.append(run_id)
        return await real_read(self, run_id, after, limit)

    monkeypatch.setattr(EventLog, "read", counted)
    async with running_worker(make_settings(redis_url, sqlite_url, instance="arch")):
        run_id = await start(client, "scripted", count=20)
        # Polled, not streamed: a stream would read the log too (the API is in this loop).
        async with asyncio.timeout(10):
            while await archived_count(sqlite_url, run_id) < 22:  # running, 20 ticks, end
                await asyncio.sleep(0.05)
    # Within the budget the worker archives what it appended; beyond, it reads the log.
    assert (run_id in log_reads) is (kept_bytes == 100)
    archived, logged = await archived_and_logged(redis_url, sqlite_url, run_id)
    assert archived == logged and len(archived) == 22


async def test_a_run_costs_its_worker_two_database_transactions(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Marking the run running is also how the worker reads it, and its ending archives
    # it in the same transaction: no read before, no archive after.
    calls: list[str] = []
    real_writing, real_get_run = RunStore._writing, RunStore.get_run

    def writing(store: RunStore) -> Any:
        if store._role == "worker":
            calls.append("write")
        return real_writing(store)

    async def get_run(store: RunStore, run_id: str, principal: str | None = None) -> Any:
        if store._role == "worker":
            calls.append("read")
        return await real_get_run(store, run_id, principal)

    monkeypatch.setattr(RunStore, "_writing", writing)
    monkeypatch.setattr(RunStore, "get_run", get_run)
    async with running_worker(make_settings(redis_url, sqlite_url, instance="txn")):
        run_id = await start(client, "scripted", count=20)
        events = await read_stream(client, run_id)
    assert events[-1]["data"]["status"] == "completed"
    assert calls == ["write", "write"]
    archived, logged = await archived_and_logged(redis_url, sqlite_url, run_id)
    assert archived == logged and len(archived) == 22
