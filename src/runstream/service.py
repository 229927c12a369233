"""A run's life, written once: create, read, stop, start, write its events, finish, orphan.

The API and the worker both call :class:`RunService`; neither writes a run's record, its
events or its archive any other way. The steps, in the order the delivery rules require
(docs/protocol.md):

- **create**: the record (queued), then the enqueue; when the enqueue fails the record
  is deleted, so no run stays queued that no worker will ever see.
- **stop**: the durable flag first (a worker may be starting the run right now), then
  the control message (in the same call), then, if the run was still queued, its end:
  it never started, so its stream holds only the terminal event.
- **finish** (and stop while queued, and an orphan's end): the record final first, then
  the terminal status event (:meth:`RunService._end`, the one place that order is
  written). "The record leads the stream": a client that saw the terminal event and then
  reads the run sees the same status. The archive goes in the record's transaction when
  the writer kept every event, else it is read back from the log after the terminal
  event.

Every error that leaves this module is one of runstream's (``errors.py``).
"""

from __future__ import annotations

import contextlib
import uuid
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import orjson
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from runstream.errors import (
    BackendUnavailable,
    IdempotencyMismatch,
    LockLost,
    RunFinished,
    RunNotFound,
)
from runstream.metrics import APPEND_ROUND_TRIPS, EVENTS_APPENDED, RUN_OUTCOMES
from runstream.models import Event, Run, RunStatus, status_event, utcnow
from runstream.resources import Resources
from runstream.store.repository import ARCHIVE_BATCH
from runstream.streams.eventlog import REFUSED, Fence

log = structlog.get_logger(__name__)
T = TypeVar("T")

SHUTDOWN_ERROR: Final = "worker shut down"
LOST_ERROR: Final = "worker lost"
WORKER_RETRY_S: Final = 30.0
"""How long a worker keeps trying to write an event or an ending while a backend is away."""
API_RETRY_S: Final = 2.0
"""How long a request keeps trying before it answers 503 (a client retries itself)."""
ARCHIVE_PAGE: Final = 500
KEPT_BYTES: Final = 256 * 1024
"""The most of a run's event data its writer keeps to archive from memory at the end,
instead of reading the whole log back from Redis (beyond it, the log is read back)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended."""

    status: RunStatus
    error: str | None = None


async def retrying(call: Callable[[], Awaitable[T]], *, within_s: float) -> T:
    """``call()``, called again while a backend is unavailable, for up to ``within_s``.

    The last BackendUnavailable is raised when the time is up.
    """
    try:
        return await call()  # the usual case, without building a retry policy per call
    except BackendUnavailable as exc:
        _log_failure(exc)
    retry = AsyncRetrying(
        retry=retry_if_exception_type(BackendUnavailable),
        stop=stop_after_delay(within_s),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        before_sleep=_log_retry,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only what it sees as a coroutine function, never a lambda.
        return await call()

    return await retry(attempt)


def _same_body(run: Run, body: tuple[Any, ...], key: str | None) -> Run:
    """``run`` when it was made from ``body``; IdempotencyMismatch otherwise. Compared as
    JSON, so ``1``, ``1.0`` and ``true`` are three different bodies."""
    made = (run.agent, run.input, run.thread_id, run.metadata)
    if orjson.dumps(made, option=orjson.OPT_SORT_KEYS) != orjson.dumps(
        body, option=orjson.OPT_SORT_KEYS
    ):
        raise IdempotencyMismatch(key)
    return run


def lock_lost(run_id: str) -> LockLost:
    """The error of a writer whose run lock another worker holds now (logged here)."""
    log.error("run lock taken by another worker; no longer writing the run", run_id=run_id)
    return LockLost(f"run {run_id}: lock held by another worker")


def _log_failure(error: BaseException | None) -> None:
    log.warning("backend unavailable; retrying", error=str(error))


def _log_retry(state: Any) -> None:
    _log_failure(state.outcome.exception() if state.outcome is not None else None)


class EventWriter:
    """Appends one run's events with contiguous ``seq``, retrying while Redis is away.

    The run's single writer (the worker holding its lock, or whoever ends it) owns one;
    appends are idempotent by ``seq``, so a retried append never duplicates. A writer
    that wrote a run from its first event keeps what it appended (up to
    :data:`KEPT_BYTES`), so the run is archived without reading its log back.
    """

    def __init__(
        self,
        resources: Resources,
        run_id: str,
        *,
        next_seq: int,
        retry_s: float,
        fence: Fence | None = None,
    ):
        self._res = resources
        self._run_id = run_id
        self._retry_s = retry_s
        self.next_seq = next_seq
        self.fence = fence
        """The run lock this writer holds, if it writes as the run's owner."""
        # Every event of the run, confirmed appended, while it holds all of them.
        self._kept: _Kept | None = _Kept() if next_seq == 1 else None
        labels = (resources.role, resources.settings.instance)
        # Looked up once: a labelled child is a dict lookup under a lock, per event otherwise.
        self._appended = EVENTS_APPENDED.labels(*labels)
        self._round_trips = APPEND_ROUND_TRIPS.labels(*labels)

    async def write(self, event: Event) -> None:
        """Append ``event``, whose ``seq`` must be :attr:`next_seq` (one round trip).

        Raises LockLost when the writer's fence is no longer the run's lock."""
        if event.seq != self.next_seq:
            raise ValueError(f"seq must stay contiguous: expected {self.next_seq}, got {event.seq}")
        try:
            added = await retrying(
                lambda: self._res.log.append(self._run_id, [event], self.fence),
                within_s=self._retry_s,
            )
        except BaseException:
            self.lost_track()
            raise
        self._round_trips.inc()
        if added == REFUSED:
            raise lock_lost(self._run_id)
        if added == 0:  # the log held this seq already: maybe not this event
            self.lost_track()
        self.appended([event])

    @property
    def run_id(self) -> str:
        return self._run_id

    def appended(self, events: Sequence[Event]) -> None:
        """Count ``events`` as appended by someone else on this writer's behalf (the
        worker's shared appender), so :attr:`next_seq` stays the next one to write."""
        self._appended.inc(len(events))
        if events and events[0].seq != self.next_seq:
            self.lost_track()  # a late answer for events already superseded
        self.next_seq += len(events)
        if self._kept is not None:
            self._kept.add(events)
            if len(self._kept.data) > KEPT_BYTES:
                self._kept = None  # too big to hold: the archive reads the log back

    def lost_track(self) -> None:
        """An append's outcome is unknown (it failed, perhaps after landing): what the
        log holds is no longer known here, so the archive reads it back."""
        self._kept = None

    def archive_with(self, terminal: Event) -> list[Event] | None:
        """Every event of the run followed by its ``terminal`` one, to archive with the
        record's ending in one transaction; None when this writer did not keep them all
        or they are too many for one (the archive is written after, as before)."""
        kept = self._kept
        if kept is None or len(kept.ends) >= ARCHIVE_BATCH:
            return None
        return [*kept.events(), terminal]

    @property
    def all_events(self) -> list[Event] | None:
        """Every event of the run, in order, when this writer appended all of them and
        kept them; else None."""
        return None if self._kept is None else self._kept.events()


class _Kept:
    """A run's events as appended, packed in three growing buffers (their data, where
    each ends, their types) rather than held as objects: three small objects per event,
    alive for a whole run, kept a busy worker's pymalloc arenas from being reused
    (+14 MiB of peak RSS at 100 runs at once)."""

    __slots__ = ("data", "ends", "types")

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("Q")
        self.types: list[str] = []  # the agents' few type strings, shared

    def add(self, events: Sequence[Event]) -> None:
        for event in events:
            self.data += event.data
            self.ends.append(len(self.data))
            self.types.append(event.type)

    def events(self) -> list[Event]:
        """The events again, ``seq`` from 1."""
        found: list[Event] = []
        start = 0
        # A view slices without an intermediate copy; released before the buffer grows.
        with memoryview(self.data) as data:
            for seq, (end, kind) in enumerate(zip(self.ends, self.types, strict=True), 1):
                found.append(Event(seq=seq, type=kind, data=bytes(data[start:end])))
                start = end
        return found


class RunService:
    """Every change to a run goes through here; see the module docstring for the order."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources

    @property
    def queued_lease_s(self) -> float:
        """How long a queued run counts against its principal without a worker renewing
        it: as long as a run may last, so a backlog does not free quota early, while a
        run that is never taken frees it eventually."""
        return self._res.settings.max_run_s + self._res.settings.worker_lost_s

    @property
    def running_lease_s(self) -> float:
        """A running run's lease, renewed with its lock: a dead worker's runs stop
        counting when the sweeper could end them."""
        return self._res.settings.worker_lost_s

    # -- the API's side ----------------------------------------------------------------

    async def create(
        self,
        *,
        principal: str,
        agent: str,
        input: dict[str, Any],
        thread_id: str | None,
        metadata: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[Run, bool]:
        """Queue a run; ``(run, False)`` when ``idempotency_key`` names an existing one.

        Raises AgentError for an unknown agent or an input it refuses, IdempotencyMismatch
        when the key names a run made from another body, BackendUnavailable when the run
        cannot be recorded or queued (nothing is left queued then).
        """
        agent_input = self._res.agents.validate_input(agent, input)
        body = (agent, agent_input, thread_id, metadata)
        if idempotency_key is not None:
            # A retry gets its run back even when the principal is at its limit now.
            found = await self._res.store.run_for_idempotency_key(principal, idempotency_key)
            if found is not None:
                return _same_body(found, body, idempotency_key), False
        run_id = str(uuid.uuid4())
        quotas = self._res.quotas
        # Counted before it exists, so concurrent creates cannot overshoot the limit.
        await quotas.take_run(principal, run_id, self.queued_lease_s)
        try:
            run, created = await self._res.store.create_run(
                run_id=run_id,
                principal=principal,
                agent=agent,
                input=agent_input,
                thread_id=thread_id,
                metadata=metadata,
                idempotency_key=idempotency_key,
                created_at=utcnow(),
            )
            if not created:
                await quotas.release_run(principal, run_id)  # the existing run is the answer
                return _same_body(run, body, idempotency_key), False
            try:
                await self._res.queue.enqueue(run.id)
            except BackendUnavailable:
                await self._res.store.delete_run(run.id)  # compensation: nobody would run it
                raise
        except BackendUnavailable:
            with contextlib.suppress(BackendUnavailable):  # else its lease expires by itself
                await quotas.release_run(principal, run_id)
            raise
        log.info("run queued", run_id=run.id, agent=run.agent, principal=principal)
        return run, True

    async def get(self, run_id: str, principal: str) -> Run:
        """The principal's run; RunNotFound when it does not exist or is another's."""
        run = await self._res.store.get_run(run_id, principal)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def check_readable(self, run_id: str, principal: str) -> None:
        """RunNotFound unless the run exists and is the principal's. Cached: a run's owner
        never changes, so opening a stream reads the database once per run, not per open."""
        if await self._res.reads.owner(run_id) != principal:
            raise RunNotFound(run_id)

    async def list(
        self,
        principal: str,
        *,
        status: RunStatus | None,
        thread_id: str | None,
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Run]:
        """The principal's runs, newest first (see ``RunStore.list_runs``)."""
        return await self._res.store.list_runs(
            principal, status=status, thread_id=thread_id, limit=limit, before=before
        )

    async def live_last_seq(self, run: Run) -> int | None:
        """The last ``seq`` in a going run's log (None when finished or unreadable)."""
        if run.status.is_final:
            return None
        try:
            return await self._res.log.last_seq(run.id)
        except BackendUnavailable:  # for display only: the record's value will do
            return None

    async def live_last_seqs(self, runs: Sequence[Run]) -> dict[str, int]:
        """The last ``seq`` of each going run of a page, by run id, in one round trip
        (missing when unreadable: for display only, the records' values will do)."""
        going = [run.id for run in runs if not run.status.is_final]
        try:
            seqs = await self._res.log.last_seqs(going)
        except BackendUnavailable:
            return {}
        return {run_id: seq for run_id, seq in zip(going, seqs, strict=True) if seq is not None}

    async def stop(self, run_id: str, principal: str) -> Run:
        """Stop the principal's run: at once when still queued, else through its worker.

        Raises RunNotFound, RunFinished when it has already ended, BackendUnavailable.
        """
        run = await self.get(run_id, principal)
        if run.status.is_final:
            raise RunFinished(run.status.value)
        await self._res.control.request_stop(run_id)  # durable first: a worker may start it
        writer = EventWriter(self._res, run_id, next_seq=1, retry_s=API_RETRY_S)
        stopped = await self._end(
            run_id,
            writer,
            Outcome(RunStatus.STOPPED),
            lambda at, archive: self._res.store.stop_queued(run_id, at, archive),
            retry_s=API_RETRY_S,
        )
        log.info("stop requested", run_id=run_id, principal=principal, was_queued=bool(stopped))
        return stopped or await self._res.store.get_run(run_id) or run

    # -- the worker's side -------------------------------------------------------------

    async def load(self, run_id: str) -> Run | None:
        """The run whoever its principal (for the worker)."""
        return await self._res.store.get_run(run_id)

    async def start_many(self, run_ids: Sequence[str]) -> dict[str, Run]:
        """Mark the queued runs among ``run_ids`` running, in one transaction; the runs
        started, by id (one that was not queued is absent: a stop came first)."""
        return await self._res.store.mark_running_many(run_ids, utcnow())

    async def unstart(self, run_ids: Sequence[str]) -> None:
        """Put runs marked running back in the queued state: their executor was gone
        before it drove them (the queue delivers them again), so they are not lost."""
        await self._res.store.return_to_queue(run_ids)

    async def stop_requested(self, run_id: str) -> bool:
        """Whether a stop was requested for the run (the durable flag)."""
        return await self._res.control.stop_requested(run_id)

    async def writer(self, run: Run, fence: Fence) -> EventWriter:
        """The writer of a run this process now owns (its lock is ``fence``), continuing
        after the last ``seq`` written (the log's, or the record's once Redis lost the log)."""
        last = await self._res.log.last_seq(run.id)
        first = max(last or 0, run.last_seq) + 1
        return EventWriter(self._res, run.id, next_seq=first, retry_s=WORKER_RETRY_S, fence=fence)

    async def finish(self, run_id: str, writer: EventWriter, outcome: Outcome) -> Run | None:
        """End a running run with ``outcome``; None when someone else ended it first."""

        def record(completed_at: datetime, archive: Sequence[Event]) -> Awaitable[Run | None]:
            return self._res.store.finish_run(
                run_id,
                status=outcome.status,
                error=outcome.error,
                last_seq=writer.next_seq,
                completed_at=completed_at,
                from_statuses=(RunStatus.RUNNING,),
                archive=archive,
            )

        return await self._end(run_id, writer, outcome, record, retry_s=WORKER_RETRY_S)

    async def end_orphan(self, run: Run, fence: Fence) -> Run | None:
        """End a ``running`` run whose worker is gone as failed ("worker lost").

        The caller holds the run's lock (``fence``), so it is the run's only writer now.
        """
        log.warning("ending a run whose worker was lost", run_id=run.id)
        writer = await self.writer(run, fence)
        return await self.finish(run.id, writer, Outcome(RunStatus.FAILED, LOST_ERROR))

    # -- the ending, written once ------------------------------------------------------

    async def _end(
        self,
        run_id: str,
        writer: EventWriter,
        outcome: Outcome,
        record: Callable[[datetime, Sequence[Event]], Awaitable[Run | None]],
        *,
        retry_s: float,
    ) -> Run | None:
        completed_at = utcnow()
        terminal = status_event(outcome.status, writer.next_seq, completed_at, outcome.error)
        # The usual run is archived by the transaction that ends its record: one
        # transaction per ending, not two. The archive leads the stream then too, which
        # changes nothing a reader sees: it reads the archive only once the log is gone.
        archive = writer.archive_with(terminal)
        final = await retrying(lambda: record(completed_at, archive or ()), within_s=retry_s)
        if final is None:
            return None  # not in the state this ending starts from: someone else ended it
        log.info("run finished", run_id=run_id, status=outcome.status.value, error=outcome.error)
        RUN_OUTCOMES.labels(self._res.role, self._res.settings.instance, outcome.status.value).inc()
        await writer.write(terminal)
        with contextlib.suppress(BackendUnavailable):  # else its lease expires by itself
            await self._res.quotas.release_run(final.principal, run_id)
        if archive is None:
            await retrying(lambda: self._archive(run_id, writer), within_s=retry_s)
        return final

    async def _archive(self, run_id: str, writer: EventWriter) -> None:
        kept = writer.all_events
        if kept is not None:  # the common case: no read of the log back from Redis
            await self._res.store.archive_events(run_id, kept)
            return
        after = 0
        while batch := await self._res.log.read(run_id, after, ARCHIVE_PAGE):
            await self._res.store.archive_events(run_id, batch)
            if batch[-1].is_terminal:
                return  # nothing follows the terminal event: no read of an empty page
            after = batch[-1].seq
