"""RunStore against real databases: a SQLite file and, where reachable, PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pytest

from runstream.errors import BackendUnavailable, TooManyConnections
from runstream.models import Event, Run, RunStatus, is_last_page
from runstream.store import RunStore, open_store
from runstream.store import database as database_module
from runstream.store.database import CONNECT_TIMEOUT_S, POOL_SIZE
from tests.postgres import postgres_url

if TYPE_CHECKING:
    from tests.postgres import TcpProxy, TestDatabase

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


T = TypeVar("T")


async def make_run(
    store: RunStore,
    *,
    principal: str = "alice",
    created_at: datetime = T0,
    key: str | None = None,
    thread_id: str | None = None,
    run_id: str | None = None,
) -> Run:
    run, created = await store.create_run(
        run_id=run_id or str(uuid.uuid4()),
        principal=principal,
        agent="echo",
        input={"text": "hello world"},
        thread_id=thread_id,
        metadata={"source": "test"},
        idempotency_key=key,
        created_at=created_at,
    )
    assert created
    return run


def event(seq: int, text: str = "x") -> Event:
    return Event(
        seq=seq, type="token", data=orjson.dumps({"type": "token", "text": text, "seq": seq})
    )


# --- creating and reading runs ------------------------------------------------------


async def test_create_run_stores_a_queued_run_that_reads_back_equal(store: RunStore) -> None:
    run = await make_run(store, thread_id="t-1")

    assert run.status is RunStatus.QUEUED
    assert run.last_seq == 0
    assert (run.started_at, run.completed_at, run.error) == (None, None, None)
    assert await store.get_run(run.id) == run
    assert run.input == {"text": "hello world"}
    assert run.metadata == {"source": "test"}


async def test_create_run_with_same_idempotency_key_returns_existing_run(
    store: RunStore,
) -> None:
    first = await make_run(store, key="k-1")

    again, created = await store.create_run(
        run_id=str(uuid.uuid4()),
        principal="alice",
        agent="echo",
        input={"text": "something else"},
        thread_id=None,
        metadata={},
        idempotency_key="k-1",
        created_at=T0 + timedelta(seconds=1),
    )

    assert not created
    assert again == first
    assert len(await list_all(store, "alice")) == 1


async def test_same_idempotency_key_of_another_principal_makes_a_new_run(
    store: RunStore,
) -> None:
    alices = await make_run(store, principal="alice", key="k-1")
    bobs = await make_run(store, principal="bob", key="k-1")

    assert bobs.id != alices.id


async def test_runs_without_idempotency_key_never_collide(store: RunStore) -> None:
    for _ in range(3):
        await make_run(store)

    assert len(await list_all(store, "alice")) == 3


async def test_concurrent_creates_with_same_key_make_one_run(store: RunStore) -> None:
    async def create(i: int) -> tuple[Run, bool]:
        return await store.create_run(
            run_id=str(uuid.uuid4()),
            principal="alice",
            agent="echo",
            input={"i": i},
            thread_id=None,
            metadata={},
            idempotency_key="same",
            created_at=T0,
        )

    results = await asyncio.gather(*(create(i) for i in range(10)))

    assert sum(created for _, created in results) == 1
    assert len({run.id for run, _ in results}) == 1
    assert [run.id for run in await list_all(store, "alice")] == [results[0][0].id]


async def test_other_principal_cannot_get_run(store: RunStore) -> None:
    run = await make_run(store, principal="alice")

    assert await store.get_run(run.id, "bob") is None
    assert await store.get_run(run.id, "alice") == run
    assert await store.get_run(run.id) == run  # no principal: any owner (workers)
    assert await store.get_run(str(uuid.uuid4())) is None


async def test_times_come_back_utc_aware(store: RunStore) -> None:
    paris_winter = timezone(timedelta(hours=1))
    created = datetime(2026, 1, 2, 4, 4, 5, 123456, tzinfo=paris_winter)
    run = await make_run(store, created_at=created)
    await store.mark_running(run.id, T0 + timedelta(seconds=1))
    await store.finish_run(
        run.id,
        status=RunStatus.COMPLETED,
        error=None,
        last_seq=2,
        completed_at=T0 + timedelta(seconds=2),
    )

    stored = await store.get_run(run.id)

    assert stored is not None
    for moment in (stored.created_at, stored.started_at, stored.completed_at):
        assert moment is not None
        assert moment.tzinfo is not None
        assert moment.utcoffset() == timedelta(0)
    assert stored.created_at == created  # the same instant, microseconds included
    assert stored.created_at.hour == 3
    assert stored.started_at == T0 + timedelta(seconds=1)
    assert stored.completed_at == T0 + timedelta(seconds=2)


async def test_naive_datetimes_are_refused(store: RunStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await make_run(store, created_at=datetime(2026, 1, 1))


async def test_delete_run_removes_it_and_its_events(store: RunStore) -> None:
    run = await make_run(store)
    kept = await make_run(store)
    await store.archive_events(run.id, [event(1), event(2)])
    await store.archive_events(kept.id, [event(1)])

    await store.delete_run(run.id)
    await store.delete_run(run.id)  # deleting what is gone is not an error

    assert await store.get_run(run.id) is None
    assert await store.read_events(run.id, after=0, limit=10) == []
    assert len(await store.read_events(kept.id, after=0, limit=10)) == 1


# --- listing ------------------------------------------------------------------------


async def list_all(store: RunStore, principal: str, **filters: Any) -> list[Run]:
    return await store.list_runs(
        principal,
        status=filters.get("status"),
        thread_id=filters.get("thread_id"),
        limit=100,
        before=None,
    )


async def test_list_runs_pages_newest_first_without_overlap(store: RunStore) -> None:
    # Pairs of runs share a created_at, so the id has to break the ties across pages.
    runs = [await make_run(store, created_at=T0 + timedelta(seconds=i // 2)) for i in range(7)]
    await make_run(store, principal="bob", created_at=T0 + timedelta(seconds=1))
    expected = sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)

    pages: list[list[Run]] = []
    before: tuple[datetime, str] | None = None
    for _ in range(len(runs) + 1):  # a cursor that never advances must fail, not hang
        page = await store.list_runs("alice", status=None, thread_id=None, limit=3, before=before)
        if not page:
            break
        pages.append(page)
        before = (page[-1].created_at, page[-1].id)
    else:
        pytest.fail(f"paging did not end: {[len(page) for page in pages]}")

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [run.id for page in pages for run in page] == [run.id for run in expected]


async def test_list_runs_filters_by_status_and_thread(store: RunStore) -> None:
    queued_a = await make_run(store, thread_id="a", created_at=T0)
    running_a = await make_run(store, thread_id="a", created_at=T0 + timedelta(seconds=1))
    running_b = await make_run(store, thread_id="b", created_at=T0 + timedelta(seconds=2))
    for run in (running_a, running_b):
        await store.mark_running(run.id, T0 + timedelta(seconds=5))

    def ids(runs: list[Run]) -> list[str]:
        return [run.id for run in runs]

    assert ids(await list_all(store, "alice", thread_id="a")) == [running_a.id, queued_a.id]
    assert ids(await list_all(store, "alice", status=RunStatus.RUNNING)) == [
        running_b.id,
        running_a.id,
    ]
    assert ids(await list_all(store, "alice", status=RunStatus.RUNNING, thread_id="a")) == [
        running_a.id
    ]
    assert await list_all(store, "alice", status=RunStatus.COMPLETED) == []
    assert await list_all(store, "bob") == []


async def test_list_runs_refuses_a_limit_below_one(store: RunStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_runs("alice", status=None, thread_id=None, limit=0, before=None)


# --- state changes ------------------------------------------------------------------


async def test_a_final_transition_archives_its_events_only_when_it_applies(
    store: RunStore,
) -> None:
    run = await make_run(store)
    await store.mark_running(run.id, T0)
    events = [event(1), event(2)]

    ended = await store.finish_run(
        run.id,
        status=RunStatus.COMPLETED,
        error=None,
        last_seq=2,
        completed_at=T0,
        archive=events,
    )
    again = await store.finish_run(
        run.id,
        status=RunStatus.FAILED,
        error="late",
        last_seq=3,
        completed_at=T0,
        archive=[event(1, "other"), event(2, "other"), event(3)],
    )
    not_queued = await store.stop_queued(run.id, T0, [event(3)])

    assert ended is not None and ended.status is RunStatus.COMPLETED
    assert again is None and not_queued is None
    assert await store.read_events(run.id, after=0, limit=10) == events


async def test_mark_running_only_from_queued(store: RunStore) -> None:
    run = await make_run(store)
    started = T0 + timedelta(seconds=1)

    running = await store.mark_running(run.id, started)

    assert running is not None
    assert running.status is RunStatus.RUNNING
    assert running.started_at == started
    assert await store.mark_running(run.id, T0 + timedelta(seconds=9)) is None
    assert await store.get_run(run.id) == running
    assert await store.mark_running(str(uuid.uuid4()), started) is None


async def test_mark_running_many_moves_only_the_queued_runs(store: RunStore) -> None:
    runs = [await make_run(store) for _ in range(4)]
    await store.mark_running(runs[0].id, T0)
    assert await store.stop_queued(runs[1].id, T0) is not None
    started = T0 + timedelta(seconds=2)
    ids = [run.id for run in runs] + [str(uuid.uuid4())]

    moved = await store.mark_running_many(ids, started)

    assert sorted(moved) == sorted([runs[2].id, runs[3].id])
    for run_id, run in moved.items():
        assert run.status is RunStatus.RUNNING and run.started_at == started
        assert await store.get_run(run_id) == run
    first = await store.get_run(runs[0].id)
    assert first is not None and first.started_at == T0  # running already: untouched
    assert await store.mark_running_many(ids, started) == {}


async def test_return_to_queue_puts_back_only_running_runs(store: RunStore) -> None:
    running, ended = await make_run(store), await make_run(store)
    await store.mark_running_many([running.id, ended.id], T0)
    assert await store.stop_queued(ended.id, T0) is None  # running: not stopped this way
    await store.finish_run(
        ended.id,
        status=RunStatus.COMPLETED,
        error=None,
        last_seq=1,
        completed_at=T0,
        from_statuses=(RunStatus.RUNNING,),
    )

    await store.return_to_queue([running.id, ended.id])

    back = await store.get_run(running.id)
    assert back is not None and back.status is RunStatus.QUEUED and back.started_at is None
    final = await store.get_run(ended.id)
    assert final is not None and final.status is RunStatus.COMPLETED


async def test_concurrent_mark_running_has_one_winner(store: RunStore) -> None:
    run = await make_run(store)

    results = await asyncio.gather(*(store.mark_running(run.id, T0) for _ in range(8)))

    assert sum(result is not None for result in results) == 1


async def test_stop_queued_ends_a_queued_run_stopped(store: RunStore) -> None:
    run = await make_run(store)
    when = T0 + timedelta(seconds=3)

    stopped = await store.stop_queued(run.id, when)

    assert stopped is not None
    assert stopped.status is RunStatus.STOPPED
    assert (stopped.completed_at, stopped.error, stopped.last_seq) == (when, None, 1)
    assert stopped.started_at is None
    assert await store.mark_running(run.id, when) is None  # its agent never starts


async def test_stop_queued_fails_once_running(store: RunStore) -> None:
    run = await make_run(store)
    running = await store.mark_running(run.id, T0)

    assert await store.stop_queued(run.id, T0 + timedelta(seconds=1)) is None
    assert await store.get_run(run.id) == running


async def test_finish_run_is_conditional(store: RunStore) -> None:
    run = await make_run(store)
    finish = {"error": None, "last_seq": 5, "completed_at": T0 + timedelta(seconds=4)}

    assert await store.finish_run(run.id, status=RunStatus.COMPLETED, **finish) is None  # queued
    await store.mark_running(run.id, T0)
    done = await store.finish_run(run.id, status=RunStatus.COMPLETED, **finish)
    again = await store.finish_run(
        run.id, status=RunStatus.FAILED, error="late", last_seq=9, completed_at=T0
    )

    assert done is not None
    assert (done.status, done.last_seq, done.error) == (RunStatus.COMPLETED, 5, None)
    assert done.completed_at == T0 + timedelta(seconds=4)
    assert again is None
    assert await store.get_run(run.id) == done


async def test_finish_run_from_other_statuses_when_asked(store: RunStore) -> None:
    run = await make_run(store)

    failed = await store.finish_run(
        run.id,
        status=RunStatus.FAILED,
        error="worker lost",
        last_seq=1,
        completed_at=T0,
        from_statuses=(RunStatus.QUEUED, RunStatus.RUNNING),
    )

    assert failed is not None
    assert (failed.status, failed.error) == (RunStatus.FAILED, "worker lost")


async def test_runs_with_status_finds_old_runs_oldest_first(store: RunStore) -> None:
    old = await make_run(store, created_at=T0)
    new = await make_run(store, created_at=T0 + timedelta(minutes=10))
    await store.mark_running(old.id, T0 + timedelta(minutes=1))
    await store.mark_running(new.id, T0 + timedelta(minutes=11))
    queued = await make_run(store, created_at=T0 + timedelta(minutes=2))

    running = await store.runs_with_status(RunStatus.RUNNING)
    waiting = await store.runs_with_status(
        RunStatus.QUEUED, created_before=T0 + timedelta(minutes=3)
    )

    assert [run.id for run in running] == [old.id, new.id]
    assert [run.id for run in waiting] == [queued.id]
    assert await store.runs_with_status(RunStatus.QUEUED, created_before=T0) == []
    assert len(await store.runs_with_status(RunStatus.RUNNING, limit=1)) == 1


# --- events -------------------------------------------------------------------------


async def test_archive_events_is_idempotent_and_ordered(store: RunStore) -> None:
    run = await make_run(store)
    await store.archive_events(run.id, [event(3, "c"), event(1, "a"), event(2, "b")])

    await store.archive_events(run.id, [event(2, "changed"), event(4, "d"), event(5, "e")])
    await store.archive_events(run.id, [event(1, "a"), event(2, "b")])

    events = await store.read_events(run.id, after=0, limit=100)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.to_dict()["text"] for e in events] == ["a", "b", "c", "d", "e"]  # first write kept
    assert events[0] == event(1, "a")  # the bytes come back exactly
    assert await store.read_events(run.id, after=3, limit=1) == [event(4, "d")]
    assert await store.read_events(run.id, after=5, limit=100) == []


async def test_archive_pages_are_bounded_by_bytes_as_well_as_by_count(store: RunStore) -> None:
    run = await make_run(store)
    await store.archive_events(run.id, [event(n, "y" * 300_000) for n in range(1, 11)])
    first = await store.read_events(run.id, after=0, limit=500)
    assert [e.seq for e in first] == [1, 2, 3, 4]  # the events before the last hold < PAGE_BYTES
    assert not is_last_page(first, 500)
    assert [e.seq for e in await store.read_events(run.id, after=4, limit=500)] == [5, 6, 7, 8]
    tail = await store.read_events(run.id, after=8, limit=500)
    assert [e.seq for e in tail] == [9, 10] and is_last_page(tail, 500)
    assert [e.seq for e in await store.read_events(run.id, after=0, limit=2)] == [1, 2]


async def test_archive_events_in_batches_larger_than_one_insert(store: RunStore) -> None:
    run = await make_run(store)
    many = [event(seq) for seq in range(1, 1203)]

    await store.archive_events(run.id, many)
    await store.archive_events(run.id, many)  # and again, all duplicates

    assert await store.read_events(run.id, after=0, limit=5000) == many
    assert await store.archive_events(run.id, []) is None


# --- opening, closing, and a database that is down ----------------------------------


async def test_dispose_on_exit(database: TestDatabase, no_task_leaks: None) -> None:
    async with open_store(database.url) as store:
        engine = store.engine
        await asyncio.gather(*(make_run(store) for _ in range(4)))
        assert engine.pool.checkedin() >= 1  # there were connections to close

    assert engine.pool.checkedout() == 0
    assert engine.pool.checkedin() == 0
    if database.backend == "postgresql":
        await wait_for_server_connections(database, 0)


async def test_dispose_on_error_and_cancellation(
    database: TestDatabase, no_task_leaks: None
) -> None:
    engines = []

    with pytest.raises(RuntimeError, match="boom"):
        async with open_store(database.url) as store:
            engines.append(store.engine)
            await make_run(store)
            raise RuntimeError("boom")

    in_use = asyncio.Event()

    async def busy_forever() -> None:
        async with open_store(database.url) as store:
            engines.append(store.engine)
            while True:  # cancelled in the middle of some query
                await make_run(store)
                in_use.set()

    task = asyncio.create_task(busy_forever())
    await in_use.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    for engine in engines:
        assert (engine.pool.checkedout(), engine.pool.checkedin()) == (0, 0)
    if database.backend == "postgresql":
        await wait_for_server_connections(database, 0)


async def wait_for_server_connections(database: TestDatabase, expected: int) -> None:
    # A backend process exits shortly after its client hangs up, not at the same instant.
    deadline = time.monotonic() + 5
    while (count := await database.server_connections()) != expected:
        assert time.monotonic() < deadline, f"{count} server connections, expected {expected}"
        await asyncio.sleep(0.05)


async def test_open_store_twice_at_once_creates_the_schema_once(database: TestDatabase) -> None:
    async def open_and_ping() -> None:
        async with open_store(database.url) as store:
            await store.ping()

    await asyncio.gather(*(open_and_ping() for _ in range(4)))


async def test_open_store_keeps_existing_rows(database: TestDatabase) -> None:
    async with open_store(database.url) as store:
        run = await make_run(store)
    async with open_store(database.url) as store:
        assert await store.get_run(run.id) == run


async def test_unreachable_database_raises_backend_unavailable() -> None:
    started = time.monotonic()

    with pytest.raises(BackendUnavailable, match=r"^database unavailable: "):
        async with open_store("postgresql+asyncpg://postgres@127.0.0.1:1/x"):
            pass

    assert time.monotonic() - started < 1


async def test_silent_database_server_times_out_as_backend_unavailable() -> None:
    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # until the client gives up and hangs up
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match=r"^database unavailable: "):
            async with open_store(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"):
                pass
    finally:
        server.close()
        await server.wait_closed()

    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1.5


async def test_sqlite_file_in_a_missing_directory_raises_backend_unavailable(
    tmp_path: Any,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'runstream.db'}"

    with pytest.raises(BackendUnavailable, match="no-such-dir does not exist"):
        async with open_store(url):
            pass


async def test_store_methods_raise_backend_unavailable_while_postgres_is_down(
    postgres: TestDatabase, proxy: TcpProxy, no_task_leaks: None
) -> None:
    async with open_store(postgres_url(postgres.name, port=proxy.port)) as store:
        run = await make_run(store)

        await proxy.cut()
        with pytest.raises(BackendUnavailable, match=r"^database unavailable: "):
            await store.ping()
        with pytest.raises(BackendUnavailable):
            await store.get_run(run.id)
        with pytest.raises(BackendUnavailable):
            await store.archive_events(run.id, [event(1)])

        await proxy.start()  # the database is back: the pool replaces its dead connections
        await store.ping()
        assert await store.get_run(run.id) == run
        assert store.engine.pool.checkedout() == 0


async def test_exhausted_pool_raises_too_many_connections(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "POOL_TIMEOUT_S", 0.2)  # not the real 10 s wait
    async with open_store(database.url) as store:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(POOL_SIZE):
                await held.enter_async_context(store.engine.connect())

            with pytest.raises(TooManyConnections, match=r"^database unavailable: "):
                await store.ping()

        await store.ping()  # the pool serves again once connections are back


@pytest.mark.parametrize(("role", "pings"), [("api", True), ("worker", False)])
async def test_a_connection_dropped_while_pooled_costs_the_worker_one_retry_and_the_api_none(
    postgres: TestDatabase, proxy: TcpProxy, no_task_leaks: None, role: str, pings: bool
) -> None:
    # The API pings a pooled connection before using it; the worker, which retries every
    # database call, saves that round trip and meets the dead connection once instead.
    async with open_store(postgres_url(postgres.name, port=proxy.port), role=role) as store:
        run = await make_run(store)
        await proxy.cut()
        await proxy.start()  # the server is reachable again; the pooled connection is dead

        if not pings:
            with pytest.raises(BackendUnavailable, match=r"^database unavailable: "):
                await store.get_run(run.id)
        assert await store.get_run(run.id) == run  # the pool replaced its dead connection
        assert store.engine.pool.checkedout() == 0


@pytest.mark.parametrize("turns", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True))])
async def test_sqlite_writers_of_one_process_take_turns_instead_of_meeting_the_lock(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, turns: bool
) -> None:
    # With no busy wait at all, two writers that meet at SQLite's write lock fail at once
    # ("database is locked"); taking turns in the process, they never meet. The variant
    # without the turns is the check that this test can fail.
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 0)
    async with open_store(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}") as store:
        if not turns:
            store._write_turn = None
        failures: list[str] = []

        async def written(write: Awaitable[T]) -> T | None:
            # Each failure is kept, none cancels the others: every write has ended, and
            # returned its connection, before the store closes.
            try:
                return await write
            except BackendUnavailable as exc:
                failures.append(str(exc))
                return None

        made = await asyncio.gather(*(written(make_run(store)) for _ in range(20)))
        runs = [run for run in made if run is not None]
        events = [event(seq) for seq in range(1, 30)]
        await asyncio.gather(*(written(store.archive_events(run.id, events)) for run in runs))
        assert failures == []
        for run in runs:
            assert len(await store.read_events(run.id, 0, 100)) == 29
