"""Following a run: replay its log after a cursor, then go live, with no gap and no duplicate.

The order is the one the delivery rules require (docs/protocol.md): listen first (the subscription
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

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, overload

from runstream.models import Run, gap_event, is_last_page, status_event
from runstream.streams import keys
from runstream.streams.frames import Frame, notification_frame, to_frame
from runstream.streams.pubsub import RESYNC, Hub, Message
from runstream.streams.reads import SharedReads

PAGE = 500

ReadPage = Callable[[str, int, int], Awaitable[list[Frame]]]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a follower reads from: the live hub and the process's shared reads."""

    hub: Hub
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
def follow_batches(
    run_id: str, after: int, sources: Sources, *, poll_s: float = ..., idle: Literal[False] = ...
) -> AsyncGenerator[list[Frame]]: ...


@overload
def follow_batches(
    run_id: str, after: int, sources: Sources, *, poll_s: float = ..., idle: Literal[True]
) -> AsyncGenerator[list[Frame] | None]: ...


async def follow_batches(
    run_id: str, after: int, sources: Sources, *, poll_s: float = 5.0, idle: bool = False
) -> AsyncGenerator[list[Frame] | None]:
    """Yield the run's events with ``seq > after``, in order, in batches, until its
    terminal event.

    A batch is what is at hand at once: a page of the log, or every notification that
    arrived while the consumer was busy. A consumer behind the run thus writes several
    events at once (one write, one syscall), and the busier the process, the larger the
    batches. ``poll_s`` bounds how long the follower trusts a silent channel before it
    looks at the log again; with ``idle`` it also yields None at each such quiet period
    (for a keep-alive, so a stream needs no timer of its own). Consume it inside
    ``contextlib.aclosing`` so the subscription is released the moment the consumer leaves.
    """
    cursor = _Cursor(after)
    channel = keys.run_notify(run_id)
    async with sources.hub.subscribe(channel, decode=notification_frame) as sub:
        stale, polled = True, False  # the log must be read before trusting notifications
        while not cursor.finished:
            if stale:
                async for batch in _catch_up(run_id, cursor, sources, poll=polled):
                    yield batch
                stale = polled = False
                continue
            try:
                first = await sub.get(timeout=poll_s)
            except TimeoutError:
                stale = polled = True
                if idle:
                    yield None
                continue
            batch, stale = _live_batch(cursor, [first, *sub.drain()])
            if batch:
                yield batch


def _live_batch(cursor: _Cursor, messages: list[Message]) -> tuple[list[Frame], bool]:
    """The next frames among live ``messages``, and whether the log must be read (a
    resync, or a skipped ``seq``)."""
    batch: list[Frame] = []
    for message in messages:
        if message is RESYNC:
            return batch, True
        assert isinstance(message, Frame)
        if message.seq == cursor.seq + 1:
            cursor.accept(message)
            batch.append(message)
            if cursor.finished:
                break
        elif message.seq > cursor.seq + 1:
            return batch, True  # skipped one or more: the log has them
    return batch, False


async def follow(
    run_id: str, after: int, sources: Sources, *, poll_s: float = 5.0
) -> AsyncGenerator[Frame]:
    """:func:`follow_batches`, one frame at a time."""
    async with contextlib.aclosing(follow_batches(run_id, after, sources, poll_s=poll_s)) as it:
        async for batch in it:
            for frame in batch:
                yield frame


async def _catch_up(
    run_id: str, cursor: _Cursor, sources: Sources, *, poll: bool
) -> AsyncIterator[list[Frame]]:
    """Deliver everything after the cursor that Redis or the archive still holds."""
    delivered = False
    async for batch in _from_log(run_id, cursor, sources, poll=poll):
        delivered = True
        yield batch
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
    async for batch in _from_log(run_id, cursor, sources, poll=False):
        yield batch
    if cursor.finished:
        return
    async for batch in _from_archive(run, cursor, sources):
        yield batch


async def _from_log(
    run_id: str, cursor: _Cursor, sources: Sources, *, poll: bool
) -> AsyncIterator[list[Frame]]:
    """Deliver what the Redis log holds after the cursor."""
    reads, first = sources.reads, cursor.seq

    async def read(run: str, after: int, limit: int) -> list[Frame]:
        # Only the first page of a poll may be answered from the last look at the log.
        return await reads.log_page(run, after, limit, poll=poll and after == first)

    async for batch in _pages(read, run_id, cursor):
        yield batch


async def _pages(read: ReadPage, run_id: str, cursor: _Cursor) -> AsyncIterator[list[Frame]]:
    """Deliver ``read``'s frames after the cursor page by page, a gap first where the
    source starts later than the cursor's next ``seq``."""
    while not cursor.finished:
        page = await read(run_id, cursor.seq, PAGE)
        if not page:
            return
        batch = [_skip_to(cursor, page[0].seq - 1)] if page[0].seq > cursor.seq + 1 else []
        for frame in page:
            if cursor.accept(frame):
                batch.append(frame)
            if cursor.finished:
                break
        if batch:
            yield batch
        if cursor.finished or is_last_page([frame.event for frame in page], PAGE):
            return


async def _from_archive(run: Run, cursor: _Cursor, sources: Sources) -> AsyncIterator[list[Frame]]:
    """Replay a finished run from the database, then make sure it ends with its status."""
    async for batch in _pages(sources.reads.archive_page, run.id, cursor):
        yield batch
    if cursor.finished:
        return
    # The terminal event is in neither place (the record is final before it is appended,
    # or it was lost): the record says how the run ended, and what is missing before it
    # is a gap. The rebuilt event equals the worker's: same seq, status, error and ts.
    final_seq = max(run.last_seq, cursor.seq + 1)
    batch = [_skip_to(cursor, final_seq - 1)] if final_seq - 1 > cursor.seq else []
    final = to_frame(
        status_event(run.status, final_seq, run.completed_at or run.created_at, run.error)
    )
    cursor.accept(final)
    yield [*batch, final]


def _skip_to(cursor: _Cursor, last_missing: int) -> Frame:
    """The ``gap`` frame for everything between the cursor and ``last_missing``."""
    gap = to_frame(gap_event(cursor.seq + 1, last_missing))
    cursor.seq = last_missing
    return gap
