"""``GET /runs/{id}/stream``: a run's events as Server-Sent Events.

The endpoint checks the caller and the cursor and takes the principal's stream lease (its
one Redis round trip); from then on the response owns the lease and releases it however
it ends (``on_close``). The subscription is taken inside the response's generator, so a
client that leaves before the first event holds no subscription. The generator runs
under ``aclosing``: a disconnect, a send timeout or a server shutdown releases it at
once (``api/sse.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from runstream.api.deps import ApiState, RunId, State, StreamPrincipal
from runstream.api.errors import ApiError
from runstream.api.schemas import errors
from runstream.api.sse import EventStreamResponse
from runstream.errors import BackendUnavailable
from runstream.metrics import ACTIVE_STREAMS, EVENTS_DELIVERED
from runstream.resources import Resources
from runstream.streams.follow import follow_batches

log = structlog.get_logger(__name__)
router = APIRouter(tags=["stream"])


MAX_CURSOR = 2**63 - 1
"""The largest ``seq`` a cursor may name (a Redis stream id's first part is 64-bit)."""
AFTER_PATTERN = r"^(now|[0-9]{1,19})$"
# no-transform: a proxy must not compress (and so buffer) the stream.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform"}
MAX_TAIL = 10_000
RETRY_MS = 1000
"""The reconnection delay every stream starts with (``retry:``), for EventSource."""
OUTAGE_RETRY_MS = 3000
"""The delay a stream answered during an outage asks for before the client comes back."""


@router.get(
    "/runs/{run_id}/stream",
    status_code=200,  # said here: the response class takes no status of its own
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "the run's events as Server-Sent Events (docs/protocol.md)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        204: {"description": "resumed at or after the run's terminal event"},
        **errors(401, 404, 422, 429),
    },
)
async def stream_run(
    run_id: RunId,
    state: State,
    principal: StreamPrincipal,
    after: Annotated[
        str | None,
        Query(pattern=AFTER_PATTERN, description="a seq, or `now`: only what comes next"),
    ] = None,
    tail: Annotated[
        int | None, Query(ge=1, le=MAX_TAIL, description="start with the last N")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> Response:
    """Replay the run's events after the cursor, then follow it live until it ends.

    The cursor is ``Last-Event-ID`` (a reconnecting EventSource sends it), else
    ``?after=SEQ``, ``?after=now`` or ``?tail=N``, else the start."""
    res = state.resources
    start = parse_start(last_event_id, after, tail)
    try:
        await state.runs.check_readable(run_id, principal)  # RunNotFound: 404
        cursor = await resolve_start(res, run_id, start)
        if cursor and await _already_ended(res, run_id, cursor):
            return Response(status_code=204)  # EventSource stops reconnecting on a 204
        # A pub/sub reconnect in progress is waited for (as long as a subscription may
        # take to confirm), not answered 503: EventSource would never come back.
        if not res.hub.healthy and not await res.hub.wait_connected(res.hub.confirm_timeout):
            raise BackendUnavailable("live delivery is down", dependency="live delivery")
        # The open's one Redis round trip: a Redis that does not answer now gets a
        # come-back-later stream, not one that opens and then fails.
        lease = await res.quotas.take_stream(principal)  # QuotaExceeded: 429
    except BackendUnavailable as exc:
        log.warning("stream answered with a retry hint", run_id=run_id, error=str(exc))
        return _come_back_later(state)
    heartbeat = res.settings.heartbeat_s
    # Taken last: from here the response owns the lease and releases it however it ends.
    return EventStreamResponse(
        _events(res, run_id, cursor),
        streams=state.streams,
        send_timeout_s=max(2 * heartbeat, 5.0),
        max_s=res.settings.stream_max_s or None,
        headers=STREAM_HEADERS,
        on_close=lambda: res.quotas.release_stream(principal, lease),
    )


@dataclass(frozen=True, slots=True)
class Start:
    """Where a reader starts: after ``seq``, or relative to the log's end."""

    seq: int = 0
    now: bool = False
    tail: int | None = None


def parse_start(last_event_id: str | None, after: str | None, tail: int | None) -> Start:
    """``Last-Event-ID`` (what a reconnecting EventSource sends) wins over ``?after=`` and
    ``?tail=``; an empty one means no cursor, as an EventSource that saw no id sends it."""
    if last_event_id is not None and last_event_id.strip():
        return Start(seq=_cursor(last_event_id))
    if after == "now":
        return Start(now=True)
    if after is not None:
        return Start(seq=_bounded(int(after), "after"))
    return Start(tail=tail) if tail is not None else Start()


def _cursor(last_event_id: str) -> int:
    text = last_event_id.strip()
    if not (text.isascii() and text.isdigit()):
        raise ApiError(
            422, "invalid_request", f"Last-Event-ID must be an integer from 0 to {MAX_CURSOR}"
        )
    return _bounded(int(text), "Last-Event-ID")


def _bounded(seq: int, what: str) -> int:
    if seq > MAX_CURSOR:
        raise ApiError(422, "invalid_request", f"{what} must be an integer from 0 to {MAX_CURSOR}")
    return seq


async def resolve_start(res: Resources, run_id: str, start: Start) -> int:
    """The ``seq`` to read after: ``start.seq``, or the log's end for ``now`` and ``tail``
    (one more Redis round trip; the record's ``last_seq`` once the log is gone)."""
    if not start.now and start.tail is None:
        return start.seq
    last = await res.log.last_seq(run_id)
    if last is None:
        run = await res.reads.record(run_id)
        last = run.last_seq if run is not None else 0
    return last if start.now else max(0, last - (start.tail or 0))


async def _already_ended(res: Resources, run_id: str, cursor: int) -> bool:
    """Whether a resume at ``cursor`` comes at or after the run's terminal event."""
    run = await res.reads.record(run_id)
    return run is not None and run.status.is_final and cursor >= run.last_seq


def _come_back_later(state: ApiState) -> EventStreamResponse:
    """A 200 stream that only asks the client to reconnect a little later: during an
    outage, a browser's EventSource then comes back by itself (a 503 would end it)."""

    async def hint() -> AsyncIterator[bytes | None]:
        yield b"retry: %d\n: unavailable, reconnect later\n\n" % OUTAGE_RETRY_MS

    return EventStreamResponse(
        hint(), streams=state.streams, send_timeout_s=5.0, headers=STREAM_HEADERS
    )


async def _events(res: Resources, run_id: str, after: int) -> AsyncIterator[bytes | None]:
    labels = (res.role, res.settings.instance)
    active, delivered = ACTIVE_STREAMS.labels(*labels), EVENTS_DELIVERED.labels(*labels)
    active.inc()
    yield b"retry: %d\n\n" % RETRY_MS
    batches = follow_batches(
        run_id, after, res.sources(), poll_s=res.settings.heartbeat_s, idle=True
    )
    try:
        async with contextlib.aclosing(batches) as it:
            async for batch in it:
                if batch is None:
                    yield None  # a quiet period: the response sends a keep-alive comment
                    continue
                # Each frame was encoded once for every reader of the process; what is at
                # hand at once goes in one write.
                yield batch[0].sse if len(batch) == 1 else b"".join(f.sse for f in batch)
                delivered.inc(len(batch))
    except BackendUnavailable as exc:
        # The headers are gone already: end the stream; the client resumes from its id.
        log.warning("stream ended early", run_id=run_id, error=str(exc))
    finally:
        active.dec()
