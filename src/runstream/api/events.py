"""``GET /runs/{id}/events``: the run's log as JSON pages, for clients that cannot hold
an event stream. ``wait`` long-polls: with nothing after the cursor yet, the request
waits up to ``wait`` seconds (at most 30) for the next events, through the same shared
subscription and reads as a stream, and holds a stream lease meanwhile. A shutdown ends
the wait at once with an empty page, as it ends streams."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from runstream.api.deps import ApiState, Principal, RunId, State
from runstream.api.schemas import EventsPage, errors, ok
from runstream.api.stream import AFTER_PATTERN, parse_start, resolve_start
from runstream.concurrency import finish_shielded
from runstream.streams.follow import follow_batches
from runstream.streams.frames import Frame

router = APIRouter(tags=["stream"])

MAX_WAIT_S: Final = 30.0
MAX_LIMIT: Final = 500


@router.get(
    "/runs/{run_id}/events",
    response_model=None,
    responses=ok(EventsPage) | errors(401, 404, 422, 429, 503),
)
async def read_events(
    run_id: RunId,
    state: State,
    principal: Principal,
    after: Annotated[str | None, Query(pattern=AFTER_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> dict[str, Any]:
    """Up to ``limit`` events with ``seq > after``; ``next_after`` is the cursor of the
    next call, ``closed`` says the run's terminal event has been read."""
    res = state.resources
    await state.runs.check_readable(run_id, principal)  # RunNotFound: 404
    cursor = await resolve_start(res, run_id, parse_start(None, after, None))
    lease = await res.quotas.take_stream(principal)  # QuotaExceeded: 429
    try:
        frames, closed = await _page(state, run_id, cursor, limit, wait)
    finally:
        # Shielded and bounded: a client that leaves mid-poll still frees its lease now.
        with contextlib.suppress(Exception):  # else the lease expires by itself
            await finish_shielded(res.quotas.release_stream(principal, lease), within_s=2.0)
    return {
        "events": [frame.event.to_dict() for frame in frames],
        "next_after": frames[-1].seq if frames else cursor,
        "closed": closed,
    }


async def _page(
    state: ApiState, run_id: str, cursor: int, limit: int, wait: float
) -> tuple[list[Frame], bool]:
    """The first batch after ``cursor`` (waiting up to ``wait`` for one), cut to
    ``limit``, and whether the run's terminal event is in it or behind the cursor."""
    res = state.resources
    batches = follow_batches(run_id, cursor, res.sources(), poll_s=max(wait, 0.001), idle=True)
    batch: list[Frame] | None = None
    # A server that starts shutting down ends the wait at once, as it ends streams: the
    # page is empty and the client polls again, on another process.
    async with contextlib.aclosing(batches) as it, state.streams.open():
        try:
            batch = await anext(it)
        except StopAsyncIteration:
            return [], True  # nothing after the cursor, and the run is over
    if batch is None:
        return [], False  # nothing came within ``wait`` (or the server is shutting down)
    page = batch[:limit]
    return page, page[-1].terminal
