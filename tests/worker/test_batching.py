"""The worker's appender: every run's queued events in one round trip, in order, and
nothing of a run after its ending."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from runstream.models import Event, build_event
from runstream.service import WORKER_RETRY_S, EventWriter
from runstream.worker.batching import Appender, batching, open_appender
from tests.conftest import wait_until
from tests.redis_server import RedisServer
from tests.system import Worker

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def tick(seq: int) -> Event:
    return build_event({"type": "tick"}, seq, NOW, max_bytes=10_000)


def logged(server: RedisServer, run_id: str) -> list[int]:
    with server.admin() as admin:
        entries = admin.xrange(f"runstream:run:{{{run_id}}}:events")
    return [int(entry_id.decode().split("-")[0]) for entry_id, _ in entries]


async def test_several_runs_queued_events_go_in_one_round_trip_each_in_order(
    worker: Worker, redis_server: RedisServer
) -> None:
    assert worker.resources is not None
    appender = Appender(worker.resources)
    writers = [
        EventWriter(worker.resources, f"run-{i}", next_seq=1, retry_s=WORKER_RETRY_S)
        for i in range(3)
    ]
    batchers = [appender.batcher(w) for w in writers]
    for batcher in batchers:  # queued while no appender runs: all wait for one send
        for seq in range(1, 6):
            await batcher.put(tick(seq))
    sends = 0
    real_send = appender._send

    async def counted(work: list[tuple[object, list[Event]]]) -> None:
        nonlocal sends
        sends += 1
        await real_send(work)  # type: ignore[arg-type]

    appender._send = counted  # type: ignore[method-assign]
    task = asyncio.ensure_future(appender._send_forever())
    try:
        for batcher in batchers:
            await asyncio.wait_for(batcher.drain(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sends == 1
    for i, writer in enumerate(writers):
        assert logged(redis_server, f"run-{i}") == [1, 2, 3, 4, 5]
        assert writer.next_seq == 6


async def test_a_run_ending_early_withdraws_what_it_had_queued(
    worker: Worker, redis_server: RedisServer
) -> None:
    assert worker.resources is not None
    writer = EventWriter(worker.resources, "ending", next_seq=1, retry_s=WORKER_RETRY_S)
    async with open_appender(worker.resources) as appender:
        with pytest.raises(RuntimeError):
            async with batching(appender, writer) as batcher:
                # Queued in this very iteration: the appender has not taken them yet.
                for seq in range(1, 4):
                    await batcher.put(tick(seq))
                raise RuntimeError("the run ends (failed, stopped, cancelled)")
        # Whatever the appender does next, none of them may land after the run's ending.
        await writer.write(tick(1))  # the run's terminal event takes the next free seq
        other = appender.batcher(EventWriter(worker.resources, "other", next_seq=1, retry_s=1))
        await other.put(tick(1))
        await asyncio.wait_for(other.drain(), 10)  # the appender went round at least once
    assert logged(redis_server, "ending") == [1]
    await wait_until(lambda: logged(redis_server, "other") == [1])


async def test_a_writer_keeps_its_runs_events_until_it_loses_track_of_the_log(
    worker: Worker,
) -> None:
    assert worker.resources is not None
    writer = EventWriter(worker.resources, "run-kept", next_seq=1, retry_s=WORKER_RETRY_S)
    writer.appended([tick(1), tick(2)])
    assert writer.all_events == [tick(1), tick(2)]
    writer.appended([tick(2)])  # a late answer for an event already counted
    assert writer.all_events is None  # so the archive reads the log back
    later = EventWriter(worker.resources, "run-later", next_seq=5, retry_s=WORKER_RETRY_S)
    later.appended([tick(5)])
    assert later.all_events is None  # it did not write the run from its first event


async def test_a_batch_the_log_partly_held_already_makes_the_writer_read_the_log_back(
    worker: Worker, redis_server: RedisServer
) -> None:
    assert worker.resources is not None
    await worker.resources.log.append("run-partly", [tick(1)])  # landed, answer lost
    writer = EventWriter(worker.resources, "run-partly", next_seq=1, retry_s=WORKER_RETRY_S)
    async with open_appender(worker.resources) as appender:
        async with batching(appender, writer) as batcher:
            await batcher.put(tick(1))
            await batcher.put(tick(2))
    assert writer.next_seq == 3 and writer.all_events is None
    assert logged(redis_server, "run-partly") == [1, 2]
