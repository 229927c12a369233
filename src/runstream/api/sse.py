"""A lean Server-Sent Events response: the request's own task plus one disconnect watcher.

Idle streams are what an API process holds most of, so each costs as little as it can:
the frames arrive already encoded (once per process, ``streams.frames``), keep-alive
comments come from the follower's own quiet-period timer (no ping task), and the only
extra task waits for the client to leave. Everything that ends a stream ends it the
same way, through one deadline: the client leaving, the server shutting down
(:meth:`OpenStreams.close_all`) or a client that stopped reading (a send that does not
complete within ``send_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runstream.concurrency import (
    completes_within,
    ended_by_deadline,
    finish_shielded,
    helper_task,
)

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""The most a stream's ``on_close`` may take (one Redis round trip)."""
PING = b": ping\n\n"
"""The keep-alive comment sent after a quiet period (an EventSource ignores it)."""


class OpenStreams:
    """The event streams open in one API process, so that a shutdown ends them at once
    (their clients resume elsewhere with ``Last-Event-ID``) instead of holding it."""

    def __init__(self) -> None:
        self._deadlines: set[asyncio.Timeout] = set()
        self.closing = False

    def close_all(self) -> None:
        """End every open stream now, and every stream opened from now on at once."""
        self.closing = True
        for deadline in list(self._deadlines):
            _expire(deadline)

    @contextlib.contextmanager
    def track(self, deadline: asyncio.Timeout) -> Iterator[None]:
        """Count the stream ending at ``deadline`` as open for the block."""
        self._deadlines.add(deadline)
        if self.closing:
            _expire(deadline)
        try:
            yield
        finally:
            self._deadlines.discard(deadline)


def _expire(deadline: asyncio.Timeout) -> None:
    if not deadline.expired():
        deadline.reschedule(asyncio.get_running_loop().time())


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from an iterator of encoded frames (``None``: a quiet period)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[bytes | None],
        *,
        streams: OpenStreams,
        send_timeout_s: float,
        max_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # X-Accel-Buffering: a proxy that buffers responses would hold events back.
        # The frames are sent by __call__ below, not by StreamingResponse's loop.
        super().__init__((), headers={"X-Accel-Buffering": "no", **(headers or {})})
        self._frames = frames
        self._streams = streams
        self._send_timeout_s = send_timeout_s
        self._max_s = max_s
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            if self._on_close is not None:  # e.g. the principal's stream lease
                with contextlib.suppress(Exception):
                    await finish_shielded(self._on_close(), within_s=CLOSE_TIMEOUT_S)

    async def _stream(self, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        # The client leaving or the server closing expires the deadline: the block ends.
        async with ended_by_deadline() as deadline:
            if self._max_s is not None:  # RUNSTREAM_STREAM_MAX_S: the client resumes
                deadline.reschedule(asyncio.get_running_loop().time() + self._max_s)
            with self._streams.track(deadline):
                async with helper_task(_until_disconnect(receive, deadline), name="sse-exit"):
                    await self._send_frames(send)
        # End the chunked body cleanly, so the client sees the stream end and resumes.
        end = {"type": "http.response.body", "body": b"", "more_body": False}
        await completes_within(send(end), self._send_timeout_s)

    async def _send_frames(self, send: Send) -> None:
        async with contextlib.aclosing(self._frames) as frames:  # type: ignore[type-var]
            async for frame in frames:
                body = {"type": "http.response.body", "body": frame or PING, "more_body": True}
                if not await completes_within(send(body), self._send_timeout_s):
                    # One line, no traceback: a slow or vanished reader is routine.
                    timeout = self._send_timeout_s
                    log.info("stream ended: the client stopped reading", after_s=timeout)
                    return


async def _until_disconnect(receive: Receive, deadline: asyncio.Timeout) -> None:
    """Wait for the client to go, then end the stream (its subscription goes with it)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    _expire(deadline)
