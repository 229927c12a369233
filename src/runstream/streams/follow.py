"""Following a run: replay its log after a cursor, then go live, with no gap and no duplicate.

The order is the one DESIGN.md's delivery rules require: listen first (the subscription
is confirmed before anything is read), then read the log after the cursor, then merge
live notifications by ``seq``, dropping what was already delivered and reading the log
whenever a ``seq`` is skipped, a subscriber overflowed, or the connection was rebuilt.
Pub/sub is only a hint (I6): every event reaches the reader from the log or from a
notification of an event already in the log.

When Redis no longer holds the log (expired, or lost with a restarted server), a finished
run is replayed from the database archive; events that exist nowhere any more are
announced with one ``gap`` event. The stream ends after the terminal status event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, overload

from runstream.models import Run, gap_event, status_event
from runstream.streams import keys
from runstream.streams.frames import Frame, notification_frame, to_frame
from runstream.streams.pubsub import RESYNC, PubSubHub
from runstream.streams.reads import SharedReads

PAGE = 500

ReadPage = Callable[[str, int, int], Awaitable[list[Frame]]]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a follower reads from: the live hub and the process's shared reads."""

    hub: PubSubHub
    reads: SharedReads


class _Cursor:
    """Tracks the last ``seq`` handed to the reader and whether the run is over."""

    def __init__(self, after: int) -> None:
        self.seq = after
        self.finished = False

    def accept(self, frame: Frame) -> bool:
        """True if ``frame`` is the next one to deliver; advances the cursor."""
        if frame.seq <= self.seq:
            return False
        self.seq = frame.seq
        self.finished = frame.terminal
        return True


@overload
def follow(
    run_id: str, after: int, sources: Sources, *, poll_s: float = ..., idle: Literal[False] = ...
) -> AsyncGenerator[Frame]: ...


@overload
def follow(
    run_id: str, after: int, sources: Sources, *, poll_s: float = ..., idle: Literal[True]
) -> AsyncGenerator[Frame | None]: ...


async def follow(
    run_id: str, after: int, sources: Sources, *, poll_s: float = 5.0, idle: bool = False
) -> AsyncGenerator[Frame | None]:
    """Yield the run's events (as frames) with ``seq > after`` until its terminal event.

    ``poll_s`` bounds how long the follower trusts a silent channel before it looks at
    the log again; with ``idle`` it also yields None at each such quiet period (for a
    keep-alive, so a stream needs no timer of its own). Consume it inside
    ``contextlib.aclosing`` so the subscription is released the moment the consumer leaves.
    """
    cursor = _Cursor(after)
    channel = keys.run_notify(run_id)
    async with sources.hub.subscribe(channel, decode=notification_frame) as sub:
        stale, polled = True, False  # the log must be read before trusting notifications
        while not cursor.finished:
            if stale:
                async for frame in _catch_up(run_id, cursor, sources, poll=polled):
                    yield frame
                stale = polled = False
                continue
            try:
                async with asyncio.timeout(poll_s):
                    message = await sub.get()
            except TimeoutError:
                stale = polled = True
                if idle:
                    yield None
                continue
            if message is RESYNC:
                stale = True
                continue
            assert isinstance(message, Frame)
            if message.seq == cursor.seq + 1:
                cursor.accept(message)
                yield message
            elif message.seq > cursor.seq + 1:
                stale = True  # skipped one or more: the log has them


async def _catch_up(
    run_id: str, cursor: _Cursor, sources: Sources, *, poll: bool
) -> AsyncIterator[Frame]:
    """Deliver everything after the cursor that Redis or the archive still holds."""
    delivered = False
    async for frame in _from_log(run_id, cursor, sources, poll=poll):
        delivered = True
        yield frame
    if delivered or cursor.finished:
        return
    # Nothing new in Redis: either the run goes on, or it is over and its log is gone
    # (expired, or lost with a restarted server), or the reader already has it all.
    run = await sources.reads.record(run_id)
    if run is None or not run.status.is_final:
        return
    if cursor.seq >= run.last_seq:
        cursor.finished = True
        return
    # The record leads the stream: it may have turned final after the log was read, with
    # the run's last events appended in between. Read the log again before the archive.
    async for frame in _from_log(run_id, cursor, sources, poll=False):
        yield frame
    if cursor.finished:
        return
    async for frame in _from_archive(run, cursor, sources):
        yield frame


async def _from_log(
    run_id: str, cursor: _Cursor, sources: Sources, *, poll: bool
) -> AsyncIterator[Frame]:
    """Deliver what the Redis log holds after the cursor."""
    reads, first = sources.reads, cursor.seq

    async def read(run: str, after: int, limit: int) -> list[Frame]:
        # Only the first page of a poll may be answered from the last look at the log.
        return await reads.log_page(run, after, limit, poll=poll and after == first)

    async for frame in _pages(read, run_id, cursor):
        yield frame


async def _pages(read: ReadPage, run_id: str, cursor: _Cursor) -> AsyncIterator[Frame]:
    """Deliver ``read``'s frames after the cursor page by page, a gap first where the
    source starts later than the cursor's next ``seq``."""
    while not cursor.finished:
        batch = await read(run_id, cursor.seq, PAGE)
        if not batch:
            return
        if batch[0].seq > cursor.seq + 1:
            yield _skip_to(cursor, batch[0].seq - 1)
        for frame in batch:
            if cursor.accept(frame):
                yield frame
            if cursor.finished:
                return
        if len(batch) < PAGE:
            return


async def _from_archive(run: Run, cursor: _Cursor, sources: Sources) -> AsyncIterator[Frame]:
    """Replay a finished run from the database, then make sure it ends with its status."""
    async for frame in _pages(sources.reads.archive_page, run.id, cursor):
        yield frame
    if cursor.finished:
        return
    # The terminal event is in neither place (the record is final before it is appended,
    # or it was lost): the record says how the run ended, and what is missing before it
    # is a gap. The rebuilt event equals the worker's: same seq, status, error and ts.
    final_seq = max(run.last_seq, cursor.seq + 1)
    if final_seq - 1 > cursor.seq:
        yield _skip_to(cursor, final_seq - 1)
    final = to_frame(
        status_event(run.status, final_seq, run.completed_at or run.created_at, run.error)
    )
    cursor.accept(final)
    yield final


def _skip_to(cursor: _Cursor, last_missing: int) -> Frame:
    """The ``gap`` frame for everything between the cursor and ``last_missing``."""
    gap = to_frame(gap_event(cursor.seq + 1, last_missing))
    cursor.seq = last_missing
    return gap
