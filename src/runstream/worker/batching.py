"""Batching an agent's events: what it yields while an append is in flight goes next, together.

The agent and the appender run side by side. :meth:`EventBatcher.put` numbers an event
and queues it; the appender sends everything queued in one round trip (the append script
takes batches, and one notification carries each event), then everything that came in
meanwhile in the next. An agent that yields slower than a round trip pays one round trip
per event, as before; a fast one pays one per batch. The queue is bounded: an agent far
ahead of Redis waits (backpressure), it does not grow the worker's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from runstream.concurrency import helper_task
from runstream.errors import RunstreamError
from runstream.models import Event
from runstream.service import EventWriter

MAX_QUEUED = 256
"""Events an agent may be ahead of Redis before its next yield waits."""


class EventBatcher:
    """Queues one run's events and appends them in as few round trips as possible."""

    def __init__(self, writer: EventWriter, max_queued: int = MAX_QUEUED) -> None:
        self._writer = writer
        self._max = max_queued
        self._queued: list[Event] = []
        self._ready = asyncio.Event()  # something is queued, or the batcher is closing
        self._room = asyncio.Event()  # the queue has room again
        self._room.set()
        self._closing = False
        self._error: RunstreamError | None = None
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
        self._ready.set()

    async def _append_forever(self) -> None:
        """The appender: send what is queued, one batch per round trip, until closed."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queued:
                batch, self._queued = self._queued, []
                self._room.set()
                try:
                    await self._writer.write_many(batch)
                except RunstreamError as exc:
                    self._error = exc
                    self._room.set()
                    return
            if self._closing:
                return

    async def _drain(self, appender: asyncio.Task[None]) -> None:
        self._closing = True
        self._ready.set()
        await asyncio.wait([appender])
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


@asynccontextmanager
async def batching(writer: EventWriter) -> AsyncIterator[EventBatcher]:
    """An :class:`EventBatcher` whose appender lives as long as the block.

    On a normal exit everything queued is appended before the block returns (raising
    BackendUnavailable when it cannot be); on an error or a cancellation what is still
    queued is dropped with the appender, and the run's ending accounts for what was sent.
    """
    batcher = EventBatcher(writer)
    async with helper_task(batcher._append_forever(), name="runstream-appender") as appender:
        yield batcher
        await batcher._drain(appender)
