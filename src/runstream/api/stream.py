"""``GET /runs/{id}/stream``: a run's events as Server-Sent Events.

The subscription is taken inside the response's generator, not in the endpoint, so a
client that leaves before the first event holds nothing. The generator runs under
``aclosing``: a disconnect, a send timeout or a server shutdown releases the
subscription at once (``api/sse.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Query

from runstream.api.deps import RunId, State, StreamPrincipal
from runstream.api.errors import ApiError
from runstream.api.sse import EventStreamResponse
from runstream.errors import BackendUnavailable
from runstream.metrics import ACTIVE_STREAMS, EVENTS_DELIVERED
from runstream.resources import Resources
from runstream.streams.follow import follow_batches

log = structlog.get_logger(__name__)
router = APIRouter(tags=["stream"])


@router.get("/runs/{run_id}/stream", response_class=EventStreamResponse)
async def stream_run(
    run_id: RunId,
    state: State,
    principal: StreamPrincipal,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStreamResponse:
    """Replay the run's events after the cursor, then follow it live until it ends."""
    res = state.resources
    cursor = _cursor(last_event_id, after)
    await state.runs.check_readable(run_id, principal)  # RunNotFound: 404
    if not res.hub.healthy:
        raise BackendUnavailable("live delivery is down (pub/sub reconnecting); retry shortly")
    # One round trip before the 200: a Redis that refuses us now gets a 503, not a stream
    # that opens and closes empty.
    await res.reads.log_exists(run_id)
    heartbeat = res.settings.heartbeat_s
    return EventStreamResponse(
        _events(res, run_id, cursor),
        streams=state.streams,
        send_timeout_s=max(2 * heartbeat, 5.0),
        headers={"Cache-Control": "no-store"},
    )


def _cursor(last_event_id: str | None, after: int | None) -> int:
    """``Last-Event-ID`` (what a reconnecting EventSource sends) wins over ``?after=``."""
    if last_event_id is None:
        return after or 0
    try:
        value = int(last_event_id)
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(422, "invalid_request", "Last-Event-ID must be a non-negative integer")
    return value


async def _events(res: Resources, run_id: str, after: int) -> AsyncIterator[bytes | None]:
    labels = (res.role, res.settings.instance)
    active, delivered = ACTIVE_STREAMS.labels(*labels), EVENTS_DELIVERED.labels(*labels)
    active.inc()
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
