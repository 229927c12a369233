"""Batching agents' events: what they yield while an append is in flight goes next, together.

Every run of a worker queues its events in its own :class:`EventBatcher`; one
:class:`Appender` per worker sends everything queued, by every run, in one pipelined
round trip (the append script takes a run's batch and publishes one notification per
event), then everything that came in meanwhile in the next. A lone run that yields
slower than a round trip pays one round trip per event, as before; a busy worker pays
one per batch of many runs' events. Each run's queue is bounded: an agent far ahead of
Redis waits (backpressure), it does not grow the worker's memory. A run's events stay
in order: a run's next batch is taken only once its previous one is appended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from runstream.concurrency import finish_shielded, helper_task
from runstream.errors import RunstreamError
from runstream.metrics import APPEND_ROUND_TRIPS
from runstream.models import Event
from runstream.resources import Resources
from runstream.service import WORKER_RETRY_S, EventWriter, lock_lost, retrying
from runstream.streams.eventlog import REFUSED, AppendBatch

MAX_QUEUED = 256
"""Events an agent may be ahead of Redis before its next yield waits."""
SETTLE_TIMEOUT_S = WORKER_RETRY_S + 5.0
"""The most a run's ending waits for its batch in flight (the appender's own retries)."""


class EventBatcher:
    """One run's queue of events on their way to the worker's :class:`Appender`."""

    def __init__(self, writer: EventWriter, appender: Appender, max_queued: int) -> None:
        self.writer = writer
        self._appender = appender
        self._max = max_queued
        self._queued: list[Event] = []
        self._room = asyncio.Event()  # the queue has room again
        self._room.set()
        self._settled = asyncio.Event()  # nothing queued, nothing in flight
        self._settled.set()
        self._error: RunstreamError | None = None
        self._in_flight = False
        self.next_seq = writer.next_seq

    async def put(self, event: Event) -> None:
        """Queue ``event`` (its ``seq`` must be :attr:`next_seq`); waits while the queue is full.

        Raises the appender's error (BackendUnavailable once its retries are spent).
        """
        if event.seq != self.next_seq:
            raise ValueError(f"seq must stay contiguous: expected {self.next_seq}, got {event.seq}")
        while len(self._queued) >= self._max and self._error is None:
            self._room.clear()
            await self._room.wait()
        self._raise_error()
        self._queued.append(event)
        self.next_seq += 1
        self._settled.clear()
        self._appender._wanted(self)

    async def drain(self) -> None:
        """Wait until everything queued is appended; raises the appender's error."""
        await self._settled.wait()
        self._raise_error()

    def _take(self) -> list[Event]:
        batch, self._queued = self._queued, []
        self._in_flight = True
        self._room.set()
        return batch

    def _done(self, error: RunstreamError | None) -> None:
        self._in_flight = False
        if error is not None:
            self._error = error
            self._queued = []
        self._room.set()
        if not self._queued:
            self._settled.set()

    def _withdraw(self) -> None:
        """Drop what is queued (the run is ending another way); a batch in flight lands."""
        self._queued = []
        self._appender._waiting.pop(self, None)
        self._room.set()
        if not self._in_flight:
            self._settled.set()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class Appender:
    """Appends every run's queued events, one pipelined round trip per batch of runs.

    Open with :func:`open_appender`; its sending task lives exactly as long as the block.
    """

    def __init__(self, resources: Resources, *, max_queued: int = MAX_QUEUED) -> None:
        self._res = resources
        self._max_queued = max_queued
        self._waiting: dict[EventBatcher, None] = {}  # an ordered set
        self._ready = asyncio.Event()
        labels = (resources.role, resources.settings.instance)
        self._round_trips = APPEND_ROUND_TRIPS.labels(*labels)

    def batcher(self, writer: EventWriter) -> EventBatcher:
        """A queue for one run's events, appended through this appender."""
        return EventBatcher(writer, self, self._max_queued)

    def _wanted(self, batcher: EventBatcher) -> None:
        self._waiting[batcher] = None
        self._ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._waiting:
                batchers = list(self._waiting)
                self._waiting.clear()
                await self._send([(b, b._take()) for b in batchers])

    async def _send(self, work: list[tuple[EventBatcher, list[Event]]]) -> None:
        items: list[AppendBatch] = [(b.writer.run_id, ev, b.writer.fence) for b, ev in work]
        log = self._res.log
        error: RunstreamError | None = None
        added: list[int] = []
        try:
            added = await retrying(lambda: log.append_many(items), within_s=WORKER_RETRY_S)
            self._round_trips.inc()
        except RunstreamError as exc:
            error = exc
        for index, (batcher, events) in enumerate(work):
            if error is not None:
                batcher.writer.lost_track()
                batcher._done(error)
            elif added[index] == REFUSED:  # another worker owns this run now
                batcher._done(lock_lost(batcher.writer.run_id))
            else:
                if added[index] != len(events):  # the log held some of them already
                    batcher.writer.lost_track()
                batcher.writer.appended(events)
                batcher._done(None)


@asynccontextmanager
async def open_appender(resources: Resources) -> AsyncIterator[Appender]:
    """A worker's appender, sending until the block exits."""
    appender = Appender(resources)
    async with helper_task(appender._send_forever(), name="runstream-appender"):
        yield appender


@asynccontextmanager
async def batching(appender: Appender, writer: EventWriter) -> AsyncIterator[EventBatcher]:
    """A run's :class:`EventBatcher` for the block.

    On a normal exit everything queued is appended before the block returns (raising
    BackendUnavailable when it cannot be); on an error or a cancellation the block
    returns at once, and the run's ending accounts for what was appended.
    """
    batcher = appender.batcher(writer)
    try:
        yield batcher
    except BaseException:
        # The run ends now (failed, stopped, cancelled): nothing of it may land after its
        # terminal event, so what is queued is dropped and a batch in flight awaited.
        batcher._withdraw()
        await finish_shielded(batcher._settled.wait(), within_s=SETTLE_TIMEOUT_S)
        raise
    await batcher.drain()
