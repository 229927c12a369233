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
    """A RunService that says when a start's transaction begins."""

    def __init__(self, resources: Resources) -> None:
        super().__init__(resources)
        self.in_flight = asyncio.Event()

    async def start_many(self, run_ids: Sequence[str]) -> dict[str, Run]:
        self.in_flight.set()
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


async def test_a_start_whose_caller_left_before_its_turn_leaves_the_run_queued(
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
        run = await asyncio.wait_for(starting, 10)
    assert run is not None and run.status is RunStatus.RUNNING
    record = await store.get_run(left)
    assert record is not None and record.status is RunStatus.QUEUED


async def test_a_failed_start_fails_every_run_of_its_transaction(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await queued(resources, 3)

    async def unreachable(*_: object) -> dict[str, object]:
        raise BackendUnavailable("database unreachable", dependency="database")

    async with open_starts(RunService(resources)) as starts:
        monkeypatch.setattr(RunStore, "mark_running_many", unreachable)
        results = await asyncio.gather(
            *(starts.start(run_id) for run_id in ids), return_exceptions=True
        )
        assert all(isinstance(result, BackendUnavailable) for result in results)
        monkeypatch.undo()
        assert await starts.start(ids[0]) is not None  # the next burst goes through
