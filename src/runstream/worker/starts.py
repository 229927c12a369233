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

from runstream.concurrency import helper_task
from runstream.errors import RunstreamError
from runstream.models import Run
from runstream.service import RunService
from runstream.store.repository import MAX_STARTS


class Starts:
    """Marks queued runs running, one transaction per burst of runs.

    Open with :func:`open_starts`; its task lives exactly as long as the block.
    """

    def __init__(self, runs: RunService) -> None:
        self._runs = runs
        self._waiting: dict[str, asyncio.Future[Run | None]] = {}
        self._ready = asyncio.Event()

    async def start(self, run_id: str) -> Run | None:
        """Mark ``run_id`` running (with whichever runs start meanwhile); None when it
        was not queued. Raises what the store raised (BackendUnavailable).

        Cancelled before its turn, the run is left queued; cancelled during it, the run
        may be running with nobody driving it, as when a lone UPDATE is cancelled: the
        sweeper ends it once its lock is free.
        """
        if run_id in self._waiting:  # its lock is held by its one caller: a bug
            raise RuntimeError(f"run {run_id} is being started twice")
        future: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        self._ready.set()
        return await future

    async def _start_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._waiting:
                await self._start(self._take())

    def _take(self) -> dict[str, asyncio.Future[Run | None]]:
        # A caller cancelled while it waited is not started at all.
        batch: dict[str, asyncio.Future[Run | None]] = {}
        for run_id in list(self._waiting)[:MAX_STARTS]:
            future = self._waiting.pop(run_id)
            if not future.done():
                batch[run_id] = future
        return batch

    async def _start(self, batch: dict[str, asyncio.Future[Run | None]]) -> None:
        if not batch:
            return
        try:
            started = await self._runs.start_many(list(batch))
        except RunstreamError as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for run_id, future in batch.items():
            if not future.done():  # else cancelled meanwhile (see start)
                future.set_result(started.get(run_id))


@asynccontextmanager
async def open_starts(runs: RunService) -> AsyncIterator[Starts]:
    """A worker's :class:`Starts`, starting runs until the block exits."""
    starts = Starts(runs)
    async with helper_task(starts._start_forever(), name="runstream-starts"):
        yield starts
