"""RunStore: every SQL statement runstream sends, and nowhere else.

Each method is one short transaction of its own, in SQLAlchemy Core over a pooled
connection: the ORM's session, unit of work and row loading bought nothing here and
showed in a worker's profile. State changes are single conditional
``UPDATE ... WHERE status IN (...) RETURNING`` statements, so two processes racing on the
same run cannot both win. Datetimes go in and come out timezone-aware UTC.
Connection failures leave as :class:`~runstream.errors.BackendUnavailable`, translated
in one place, :func:`database_errors`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import RowMapping, and_, delete, exc, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runstream.budget import budget_exhausted
from runstream.errors import BackendUnavailable, TooManyConnections
from runstream.models import PAGE_BYTES, Event, Run, RunStatus
from runstream.store.tables import EventRow, RunRow, metadata

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

RUNS = metadata.tables[RunRow.__tablename__]
EVENTS = metadata.tables[EventRow.__tablename__]

ARCHIVE_BATCH = 500
"""Events per INSERT when archiving: far below SQLite's and asyncpg's parameter limits."""
MAX_STARTS = 500
"""Runs marked running by one UPDATE: as far below those limits."""

# What "the database cannot serve us now" looks like: SQLAlchemy's wrappers of the
# drivers' connection errors, and the socket errors and connect timeouts that asyncpg
# raises unwrapped while a connection is being opened.
_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, OSError, TimeoutError)

# PostgreSQL SQLSTATE classes of errors about the server or the connection, not the SQL:
# connection exception, bad credentials, unknown database, insufficient resources,
# server shutting down or starting up. asyncpg reports them while connecting, where
# SQLAlchemy wraps them as a bare DBAPIError.
_UNAVAILABLE_SQLSTATES = ("08", "28", "3D", "53", "57P")
_TOO_MANY_CLIENTS = "53300"


@contextmanager
def database_errors(*, role: str = "unknown", instance: str = "unknown") -> Iterator[None]:
    """Turn connection-level database errors into BackendUnavailable.

    The pool running dry and the server refusing more clients become its subclass
    TooManyConnections (logged and counted for ``role`` and ``instance``). Anything else
    (an IntegrityError, a bug) passes unchanged.
    """
    try:
        yield
    except exc.TimeoutError as error:  # the pool had no free connection within pool_timeout
        raise _exhausted(error, role, instance) from error
    except (*_UNAVAILABLE, exc.DBAPIError) as error:  # DBAPIError: see _UNAVAILABLE_SQLSTATES
        sqlstate = _sqlstate(error)
        if sqlstate == _TOO_MANY_CLIENTS:
            raise _exhausted(error, role, instance) from error
        if (
            isinstance(error, _UNAVAILABLE)
            or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
            or (isinstance(error, exc.DBAPIError) and error.connection_invalidated)
        ):
            raise BackendUnavailable(
                f"database unavailable: {_first_line(error)}", dependency="the database"
            ) from error
        raise


def _exhausted(error: BaseException, role: str, instance: str) -> TooManyConnections:
    message = f"database unavailable: {_first_line(error)}"
    return budget_exhausted(message, role=role, instance=instance, backend="database")


def _sqlstate(error: BaseException) -> str:
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    sqlstate = getattr(cause, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else ""


def _first_line(error: BaseException) -> str:
    # SQLAlchemy appends the SQL and a documentation link; the driver's message is enough.
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def configure_sqlite_connection(
    dbapi_connection: Any, _record: Any, *, busy_timeout_ms: int
) -> None:
    """Per SQLite connection: writers queue for the lock (instead of failing at once with
    "database is locked"), and foreign keys (so ON DELETE CASCADE) are enforced."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # With WAL, NORMAL syncs at checkpoints rather than at every commit: a crash of
        # the process loses nothing, a power cut may lose the last commits (SQLite's own
        # advice for WAL). Every commit's fsync capped one process at ~100 runs/s.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


async def use_wal(connection: AsyncConnection) -> None:
    """Switch a SQLite file to WAL, so readers never block the writer."""
    await connection.exec_driver_sql("PRAGMA journal_mode=WAL")


async def create_schema(connection: AsyncConnection) -> None:
    """Create the tables if missing, safe when several processes start at once.

    A schema lock comes first, so the second process to start waits for the first and
    then finds the tables, instead of failing on "already exists".
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # Transaction-scoped: released by the commit that also publishes the tables.
        await connection.execute(text("SELECT pg_advisory_xact_lock(7406221501)"))
    elif dialect == "sqlite":
        # pysqlite runs DDL outside any transaction; take the write lock explicitly.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
    await connection.run_sync(metadata.create_all)


class RunStore:
    """Run records and archived events, over an async SQLAlchemy engine."""

    def __init__(
        self, engine: AsyncEngine, *, role: str = "unknown", instance: str = "unknown"
    ) -> None:
        self._engine = engine
        self._role = role
        self._instance = instance
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store uses (for pool introspection and tests)."""
        return self._engine

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        with database_errors(role=self._role, instance=self._instance):
            async with self._engine.begin() as connection:
                yield connection

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes. On SQLite the process's writers take turns here,
        in order, rather than in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms...
        between its attempts at the database's one write lock."""
        if self._write_turn is None:
            async with self._transaction() as connection:
                yield connection
            return
        async with self._write_turn, self._transaction() as connection:
            yield connection

    async def ping(self) -> None:
        """Check the database answers; raises BackendUnavailable when it does not."""
        async with self._transaction() as connection:
            await connection.execute(text("SELECT 1"))

    async def create_run(
        self,
        *,
        run_id: str,
        principal: str,
        agent: str,
        input: dict[str, Any],
        thread_id: str | None,
        metadata: dict[str, Any],
        idempotency_key: str | None,
        created_at: datetime,
    ) -> tuple[Run, bool]:
        """Insert a queued run; returns ``(run, True)``.

        When ``idempotency_key`` is given and this principal already has a run with it,
        returns ``(that run, False)`` and inserts nothing, also when the other run is
        being created concurrently.
        """
        if idempotency_key is not None:
            existing = await self._by_idempotency_key(principal, idempotency_key)
            if existing is not None:
                return existing, False
        row = {
            "id": run_id,
            "principal": principal,
            "agent": agent,
            "status": RunStatus.QUEUED.value,
            "input": input,
            "thread_id": thread_id,
            "metadata": metadata,
            "idempotency_key": idempotency_key,
            "created_at": _to_utc(created_at),
            "started_at": None,
            "completed_at": None,
            "error": None,
            "last_seq": 0,
        }
        try:
            async with self._writing() as connection:
                await connection.execute(insert(RUNS), row)
            return _to_run(row), True
        except exc.IntegrityError:
            # A concurrent request with the same key inserted first: its run is the answer.
            if idempotency_key is None:
                raise
            existing = await self._by_idempotency_key(principal, idempotency_key)
            if existing is None:
                raise
            return existing, False

    async def run_for_idempotency_key(self, principal: str, key: str) -> Run | None:
        """The principal's run made with ``key``, if any."""
        return await self._by_idempotency_key(principal, key)

    async def _by_idempotency_key(self, principal: str, key: str) -> Run | None:
        query = select(RUNS).where(RUNS.c.principal == principal, RUNS.c.idempotency_key == key)
        async with self._transaction() as connection:
            row = (await connection.execute(query)).mappings().first()
            return None if row is None else _to_run(row)

    async def get_run(self, run_id: str, principal: str | None = None) -> Run | None:
        """The run, or None if it does not exist or (given ``principal``) is not theirs."""
        query = select(RUNS).where(RUNS.c.id == run_id)
        if principal is not None:
            query = query.where(RUNS.c.principal == principal)
        async with self._transaction() as connection:
            row = (await connection.execute(query)).mappings().first()
            return None if row is None else _to_run(row)

    async def list_runs(
        self,
        principal: str,
        *,
        status: RunStatus | None,
        thread_id: str | None,
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Run]:
        """A principal's runs, newest first by ``(created_at, id)``.

        ``before`` is the ``(created_at, id)`` of the last run of the previous page; only
        runs strictly after it in that order are returned.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = select(RUNS).where(RUNS.c.principal == principal)
        if status is not None:
            query = query.where(RUNS.c.status == status.value)
        if thread_id is not None:
            query = query.where(RUNS.c.thread_id == thread_id)
        if before is not None:
            moment, last_id = _to_utc(before[0]), before[1]
            query = query.where(
                or_(
                    RUNS.c.created_at < moment,
                    and_(RUNS.c.created_at == moment, RUNS.c.id < last_id),
                )
            )
        query = query.order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc()).limit(limit)
        async with self._transaction() as connection:
            return [_to_run(row) for row in (await connection.execute(query)).mappings()]

    async def delete_run(self, run_id: str) -> None:
        """Delete a run and its archived events; nothing happens if it does not exist."""
        async with self._writing() as connection:
            await connection.execute(delete(RUNS).where(RUNS.c.id == run_id))

    async def mark_running(self, run_id: str, started_at: datetime) -> Run | None:
        """Move a queued run to running; None (and no change) if it was not queued."""
        return (await self.mark_running_many([run_id], started_at)).get(run_id)

    async def mark_running_many(
        self, run_ids: Sequence[str], started_at: datetime
    ) -> dict[str, Run]:
        """Move the queued runs among ``run_ids`` to running, in one statement; the runs
        moved, by id (a run that was not queued is left as it was, and absent)."""
        if len(run_ids) > MAX_STARTS:
            raise ValueError(f"at most {MAX_STARTS} runs start in one statement")
        statement = (
            update(RUNS)
            .where(RUNS.c.id.in_(run_ids), RUNS.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.RUNNING.value, started_at=_to_utc(started_at))
            .returning(*RUNS.c)
        )
        async with self._writing() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return {row["id"]: _to_run(row) for row in rows}

    async def return_to_queue(self, run_ids: Sequence[str]) -> None:
        """Move the running runs among ``run_ids`` back to queued, as if never started:
        for runs marked running whose executor had gone before it could drive them."""
        statement = (
            update(RUNS)
            .where(RUNS.c.id.in_(run_ids), RUNS.c.status == RunStatus.RUNNING.value)
            .values(status=RunStatus.QUEUED.value, started_at=None)
        )
        async with self._writing() as connection:
            await connection.execute(statement)

    async def stop_queued(
        self, run_id: str, completed_at: datetime, archive: Sequence[Event] = ()
    ) -> Run | None:
        """Stop a run that never started; None (and no change) if it was not queued.

        ``last_seq`` becomes 1: the terminal status event is the only event of such a run.
        ``archive``: events archived in the same transaction when the stop applies.
        """
        return await self._transition(
            run_id,
            (RunStatus.QUEUED,),
            archive,
            status=RunStatus.STOPPED.value,
            completed_at=_to_utc(completed_at),
            error=None,
            last_seq=1,
        )

    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        error: str | None,
        last_seq: int,
        completed_at: datetime,
        from_statuses: tuple[RunStatus, ...] = (RunStatus.RUNNING,),
        archive: Sequence[Event] = (),
    ) -> Run | None:
        """Write a run's final state; None (and no change) if it was not in ``from_statuses``.

        ``archive``: events archived in the same transaction when the change applies (at
        most ``ARCHIVE_BATCH``; more go through :meth:`archive_events`)."""
        return await self._transition(
            run_id,
            from_statuses,
            archive,
            status=status.value,
            error=error,
            last_seq=last_seq,
            completed_at=_to_utc(completed_at),
        )

    async def _transition(
        self,
        run_id: str,
        from_statuses: tuple[RunStatus, ...],
        archive: Sequence[Event] = (),
        **values: Any,
    ) -> Run | None:
        # One conditional UPDATE: the status check and the write cannot be interleaved
        # by another process, whatever the isolation level.
        if len(archive) > ARCHIVE_BATCH:
            raise ValueError(f"at most {ARCHIVE_BATCH} events archive with a transition")
        statement = (
            update(RUNS)
            .where(RUNS.c.id == run_id, RUNS.c.status.in_([s.value for s in from_statuses]))
            .values(**values)
            .returning(*RUNS.c)
        )
        async with self._writing() as connection:
            row = (await connection.execute(statement)).mappings().first()
            if row is None:
                return None
            if archive:
                rows = _event_rows(run_id, archive)
                await connection.execute(_insert_events_ignoring_duplicates(connection), rows)
            return _to_run(row)

    async def archive_events(self, run_id: str, events: Sequence[Event]) -> None:
        """Store a run's events; events already archived (same ``seq``) are skipped.

        Each batch is its own transaction, so archiving a long run never holds SQLite's
        write lock for long; a retry after a partial failure fills in what is missing.
        """
        for start in range(0, len(events), ARCHIVE_BATCH):
            rows = _event_rows(run_id, events[start : start + ARCHIVE_BATCH])
            async with self._writing() as connection:
                await connection.execute(_insert_events_ignoring_duplicates(connection), rows)

    async def read_events(self, run_id: str, after: int, limit: int) -> list[Event]:
        """Archived events of a run with ``seq > after``, in ``seq`` order, at most
        ``limit`` and about ``PAGE_BYTES`` (as a log page: see ``is_last_page``)."""
        size = func.length(EVENTS.c.data)
        page = (
            select(
                EVENTS.c.seq,
                EVENTS.c.type,
                EVENTS.c.data,
                (func.sum(size).over(order_by=EVENTS.c.seq) - size).label("before"),
            )
            .where(EVENTS.c.run_id == run_id, EVENTS.c.seq > after)
            .order_by(EVENTS.c.seq)
            .limit(limit)
            .subquery()
        )
        # An event is in the page while the events before it hold under PAGE_BYTES.
        query = (
            select(page.c.seq, page.c.type, page.c.data)
            .where(page.c.before < PAGE_BYTES)
            .order_by(page.c.seq)
        )
        async with self._transaction() as connection:
            return [
                Event(seq=seq, type=kind, data=bytes(data))
                for seq, kind, data in await connection.execute(query)
            ]

    async def runs_with_status(
        self,
        status: RunStatus,
        *,
        created_before: datetime | None = None,
        limit: int = 500,
    ) -> list[Run]:
        """Runs in ``status``, oldest first, optionally only those created before a time."""
        query = select(RUNS).where(RUNS.c.status == status.value)
        if created_before is not None:
            query = query.where(RUNS.c.created_at < _to_utc(created_before))
        query = query.order_by(RUNS.c.created_at, RUNS.c.id).limit(limit)
        async with self._transaction() as connection:
            return [_to_run(row) for row in (await connection.execute(query)).mappings()]


def _event_rows(run_id: str, events: Sequence[Event]) -> list[dict[str, Any]]:
    return [
        {"run_id": run_id, "seq": event.seq, "type": event.type, "data": event.data}
        for event in events
    ]


def _insert_events_ignoring_duplicates(connection: AsyncConnection) -> Any:
    # Each dialect's module is imported when its database is in use: the PostgreSQL one
    # is 2.5 MiB of an API's RSS at start that an SQLite deployment never needs.
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(EVENTS).on_conflict_do_nothing(index_elements=["run_id", "seq"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(EVENTS).on_conflict_do_nothing(index_elements=["run_id", "seq"])
    raise NotImplementedError(f"archiving events is not implemented for {dialect}")


def _to_utc(moment: datetime) -> datetime:
    # SQLite keeps the wall-clock digits and drops the offset, so everything is stored
    # in UTC; a naive datetime is a caller's bug that would be silently misfiled.
    if moment.tzinfo is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _from_db(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite returns the stored UTC digits without an offset.
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _to_run(row: RowMapping | Mapping[str, Any]) -> Run:
    created_at = _from_db(row["created_at"])
    assert created_at is not None  # the column is NOT NULL
    return Run(
        id=row["id"],
        principal=row["principal"],
        agent=row["agent"],
        status=RunStatus(row["status"]),
        input=row["input"],
        thread_id=row["thread_id"],
        metadata=row["metadata"],
        created_at=created_at,
        started_at=_from_db(row["started_at"]),
        completed_at=_from_db(row["completed_at"]),
        error=row["error"],
        last_seq=row["last_seq"],
    )
