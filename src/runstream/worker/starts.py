"""Starting runs in bursts: the runs that start while a start is in flight go next, together.

A worker takes up to ``RUNSTREAM_WORKER_CONCURRENCY`` runs at once, and a queue that
was full hands it that many in a burst. Marking each running in a transaction of its
own queued them on SQLite's one writer: 50 runs took 150 ms to start, each ~3 ms (six
hops to the driver's thread), and the last run's first event came up to 250 ms after
the first one's. :class:`Starts` marks every run waiting in one UPDATE, then those that
came in meanwhile in the next, as the appender does with events (``batching.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from runstream.concurrency import helper_task
from runstream.errors import BackendUnavailable, RunstreamError, describe
from runstream.models import Run
from runstream.service import RunService
from runstream.store.repository import MAX_STARTS

log = structlog.get_logger(__name__)


class Starts:
    """Marks queued runs running, one transaction per burst of runs.

    Open with :func:`open_starts`; its task lives exactly as long as the block, and no
    caller outlives it: when it ends, every start still waiting fails.
    """

    def __init__(self, runs: RunService) -> None:
        self._runs = runs
        self._waiting: dict[str, asyncio.Future[Run | None]] = {}
        self._in_flight: dict[str, asyncio.Future[Run | None]] = {}
        self._ready = asyncio.Event()

    async def start(self, run_id: str) -> Run | None:
        """Mark ``run_id`` running (with whichever runs start meanwhile); None when it
        was not queued. Raises BackendUnavailable when the database refused, or
        RuntimeError for any other failure of the transaction (each caller its own).

        A caller cancelled before its turn leaves its run queued; one cancelled during
        it has its run put back to queued once the transaction is done, so the queue's
        next delivery starts it.
        """
        if run_id in self._waiting:  # its lock is held by its one caller: a bug
            raise RuntimeError(f"run {run_id} is being started twice")
        future: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        self._ready.set()
        try:
            return await future
        finally:
            if self._waiting.get(run_id) is future:  # cancelled before its turn
                del self._waiting[run_id]

    async def _start_forever(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._waiting:
                    self._in_flight = self._take()
                    await self._start(self._in_flight)
                    self._in_flight = {}
        finally:
            # Cancelled (the block exits) or failed: no caller may wait for it any more.
            gone = BackendUnavailable("the worker is shutting down", dependency="the worker")
            _fail(self._in_flight | self._waiting, gone)
            self._in_flight, self._waiting = {}, {}

    def _take(self) -> dict[str, asyncio.Future[Run | None]]:
        batch: dict[str, asyncio.Future[Run | None]] = {}
        for run_id in list(self._waiting)[:MAX_STARTS]:
            future = self._waiting.pop(run_id)
            if not future.done():  # else its caller was cancelled: not started at all
                batch[run_id] = future
        return batch

    async def _start(self, batch: dict[str, asyncio.Future[Run | None]]) -> None:
        if not batch:
            return
        try:
            started = await self._runs.start_many(list(batch))
        except Exception as exc:  # whatever it is, it is each caller's to report
            _fail(batch, exc)
            return
        # Callers cancelled while the transaction ran: their runs have nobody to drive them.
        gone = [run_id for run_id, future in batch.items() if future.done() and run_id in started]
        for run_id, future in batch.items():
            if not future.done():
                future.set_result(started.get(run_id))
        if gone:
            await self._unstart(gone)

    async def _unstart(self, run_ids: list[str]) -> None:
        # Marked running after their callers were cancelled: nobody drives them.
        try:
            await self._runs.unstart(run_ids)
        except RunstreamError as exc:  # the sweeper ends them as lost instead
            log.warning("runs left running without an executor", runs=run_ids, error=str(exc))


def _fail(batch: dict[str, asyncio.Future[Run | None]], exc: BaseException) -> None:
    """Fail every start of ``batch``, each with an exception of its own (one object
    raised in many tasks would mix their tracebacks)."""
    for future in batch.values():
        if not future.done():
            future.set_exception(_own_copy(exc))


def _own_copy(exc: BaseException) -> Exception:
    copy: Exception
    if isinstance(exc, BackendUnavailable):
        copy = BackendUnavailable(str(exc), dependency=exc.dependency)
    else:
        copy = RuntimeError(f"marking runs running failed: {describe(exc)}")
    copy.__cause__ = exc
    return copy


@asynccontextmanager
async def open_starts(runs: RunService) -> AsyncIterator[Starts]:
    """A worker's :class:`Starts`, starting runs until the block exits."""
    starts = Starts(runs)
    async with helper_task(starts._start_forever(), name="runstream-starts"):
        yield starts
