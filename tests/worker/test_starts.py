"""The worker's starts: runs that start together are marked running in one transaction;
one that was not queued, or whose caller left before its turn, is not started."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from runstream.errors import BackendUnavailable
from runstream.models import Run, RunStatus, utcnow
from runstream.resources import Resources
from runstream.service import RunService
from runstream.store.repository import RunStore
from runstream.worker.starts import open_starts
from tests.conftest import wait_until
from tests.system import Worker


@pytest.fixture
def resources(worker: Worker) -> Resources:
    """The running worker's resources: its store and pools, for a Starts of the test's."""
    assert worker.resources is not None
    return worker.resources


async def queued(resources: Resources, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for run_id in ids:
        await resources.store.create_run(
            run_id=run_id,
            principal="p",
            agent="scripted",
            input={"count": 1},
            thread_id=None,
            metadata={},
            idempotency_key=None,
            created_at=utcnow(),
        )
    return ids


class ObservedRuns(RunService):
    """A RunService that says when a start's transaction begins, and for which runs."""

    def __init__(self, resources: Resources) -> None:
        super().__init__(resources)
        self.in_flight = asyncio.Event()
        self.batches: list[list[str]] = []

    async def start_many(self, run_ids: Sequence[str]) -> dict[str, Run]:
        self.in_flight.set()
        self.batches.append(list(run_ids))
        return await super().start_many(run_ids)


def counting_transactions(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    calls: list[None] = []
    real = RunStore._writing

    def writing(store: RunStore) -> Any:
        calls.append(None)
        return real(store)

    monkeypatch.setattr(RunStore, "_writing", writing)
    return calls


async def test_runs_starting_together_are_marked_running_in_one_transaction(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await queued(resources, 20)
    await resources.store.mark_running(ids[0], utcnow())  # started elsewhere already
    transactions = counting_transactions(monkeypatch)
    async with open_starts(RunService(resources)) as starts:
        started = await asyncio.gather(*(starts.start(run_id) for run_id in ids))
    assert len(transactions) == 1  # one each was 20
    assert started[0] is None
    assert [run.id if run else None for run in started[1:]] == ids[1:]
    assert all(run is not None and run.status is RunStatus.RUNNING for run in started[1:])


async def test_a_start_whose_caller_left_before_its_turn_is_not_started_and_can_start_again(
    resources: Resources,
) -> None:
    first, left = await queued(resources, 2)
    store = resources.store
    turn = store._write_turn
    assert turn is not None  # SQLite: the writers of a process take turns
    runs = ObservedRuns(resources)
    async with open_starts(runs) as starts:
        async with turn:  # the first start is in flight, waiting for the database
            starting = asyncio.create_task(starts.start(first))
            await asyncio.wait_for(runs.in_flight.wait(), 10)
            leaving = asyncio.create_task(starts.start(left))
            await wait_until(lambda: left in starts._waiting)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert left not in starts._waiting  # gone with its caller, not started
            # The queue's next delivery of it, while the first start is still in flight.
            again = asyncio.create_task(starts.start(left))
        run = await asyncio.wait_for(starting, 10)
        started_again = await asyncio.wait_for(again, 10)
    assert run is not None and run.status is RunStatus.RUNNING
    assert started_again is not None and started_again.status is RunStatus.RUNNING
    assert runs.batches == [[first], [left]]  # the cancelled start was in none


async def test_a_start_whose_caller_left_during_its_turn_puts_the_run_back_in_the_queue(
    resources: Resources,
) -> None:
    (run_id,) = await queued(resources, 1)
    store = resources.store
    turn = store._write_turn
    assert turn is not None
    runs = ObservedRuns(resources)
    async with open_starts(runs) as starts:
        async with turn:  # its transaction is under way, waiting for the database
            starting = asyncio.create_task(starts.start(run_id))
            await asyncio.wait_for(runs.in_flight.wait(), 10)
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
        await wait_until(lambda: not starts._in_flight)
        record = await store.get_run(run_id)
    # Marked running by the transaction, then put back: the next delivery starts it,
    # instead of finding it running with nobody driving it and ending it as lost.
    assert record is not None and record.status is RunStatus.QUEUED
    assert record.started_at is None


async def test_a_failed_start_fails_each_run_of_its_transaction_with_its_own_error(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await queued(resources, 3)
    cases: list[tuple[Exception, type[Exception]]] = [
        (BackendUnavailable("database unreachable", dependency="the database"), BackendUnavailable),
        (ValueError("a bug"), RuntimeError),  # not the database's: still each caller's
    ]
    failure = cases[0][0]

    async def failing(*_: object) -> dict[str, object]:  # the case the loop is at
        raise failure

    async with open_starts(RunService(resources)) as starts:
        monkeypatch.setattr(RunStore, "mark_running_many", failing)
        for failure, raised in cases:
            results = await asyncio.gather(
                *(starts.start(run_id) for run_id in ids), return_exceptions=True
            )
            assert all(type(result) is raised for result in results), results
            assert all(result.__cause__ is failure for result in results)  # type: ignore[union-attr]
            assert len({id(result) for result in results}) == 3  # one each, own traceback
        monkeypatch.undo()
        assert await starts.start(ids[0]) is not None  # the next burst goes through


async def test_starts_still_waiting_when_the_block_ends_fail_instead_of_hanging(
    resources: Resources,
) -> None:
    first, second = await queued(resources, 2)
    turn = resources.store._write_turn
    assert turn is not None
    runs = ObservedRuns(resources)
    async with turn:
        async with open_starts(runs) as starts:
            in_flight = asyncio.create_task(starts.start(first))
            await asyncio.wait_for(runs.in_flight.wait(), 10)
            waiting = asyncio.create_task(starts.start(second))
            await wait_until(lambda: second in starts._waiting)
        results = await asyncio.wait_for(
            asyncio.gather(in_flight, waiting, return_exceptions=True), 10
        )
    assert all(isinstance(result, BackendUnavailable) for result in results), results
