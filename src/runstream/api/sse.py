"""A lean Server-Sent Events response: the request's own task plus one disconnect watcher.

Idle streams are what an API process holds most of, so each costs as little as it can:
the frames arrive already encoded (once per process, ``streams.frames``), keep-alive
comments come from the follower's own quiet-period timer (no ping task), and the only
extra task waits for the client to leave. Everything that ends a stream ends it the
same way, through one deadline: the client leaving, the server shutting down
(:meth:`OpenStreams.close_all`) or a client that stopped reading (a send that does not
complete within ``send_timeout_s``, found by one check a second for the whole process:
:meth:`OpenStreams.send`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Final

import structlog
from starlette.types import Message, Receive, Scope, Send

from runstream.concurrency import (
    QuietDeadline,
    collapse_excgroups,
    completes_within,
    finish_shielded,
)
from runstream.errors import BackendUnavailable
from runstream.metrics import ACTIVE_STREAMS, EVENTS_DELIVERED
from runstream.streams.frames import Frame

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""The most a stream's ``on_close`` may take (one Redis round trip)."""
PING = b": ping\n\n"
"""The keep-alive comment sent after a quiet period (an EventSource ignores it)."""
SEND_CHECK_EVERY_S = 1.0
"""How often the sends in flight are checked: a client that stopped reading is cut
between ``send_timeout_s`` and this much later."""


class OpenStreams:
    """The event streams open in one API process, so that a shutdown ends them at once
    (their clients resume elsewhere with ``Last-Event-ID``) instead of holding it."""

    def __init__(self) -> None:
        self._deadlines: set[asyncio.Timeout] = set()
        # The streams' sends in flight: deadline -> (when the send is overdue, its timeout).
        self._sending: dict[asyncio.Timeout, tuple[float, float]] = {}
        self._check: asyncio.TimerHandle | None = None
        self.closing = False

    def close_all(self) -> None:
        """End every open stream now, and every stream opened from now on at once."""
        self.closing = True
        for deadline in list(self._deadlines):
            _expire(deadline)

    def open(self, max_s: float | None = None) -> OpenStream:
        """``async with streams.open() as deadline``: the block is one open stream. It
        ends, without an error, when ``deadline`` expires: after ``max_s``, at
        :meth:`close_all`, or when the code holding the deadline expires it."""
        return OpenStream(self, max_s)

    async def send(
        self, send: Send, message: Message, deadline: asyncio.Timeout, within_s: float
    ) -> None:
        """``await send(message)`` inside an open stream's block: a send still waiting
        after ``within_s`` (its client stopped reading) expires ``deadline``, which ends the
        block quietly, with one log line.

        One check every SEND_CHECK_EVERY_S serves all the process's sends, armed only
        while some are in flight: a timer per send (``asyncio.timeout``) was a fifth of
        the API's CPU at 1,000 streams, for sends that nearly always complete at once.
        """
        loop = asyncio.get_running_loop()
        self._sending[deadline] = (loop.time() + within_s, within_s)
        if self._check is None:
            self._check = loop.call_later(SEND_CHECK_EVERY_S, self._cut_stalled, loop)
        try:
            await send(message)
        finally:
            del self._sending[deadline]

    def stop_checking(self) -> None:
        """Cancel the pending check of sends, if any (the app's lifespan ends with it)."""
        if self._check is not None:
            self._check.cancel()
            self._check = None

    def _cut_stalled(self, loop: asyncio.AbstractEventLoop) -> None:
        self._check = None  # first: whatever happens below, the next send arms a check
        now = loop.time()
        for deadline, (overdue_at, within_s) in list(self._sending.items()):
            # An expired deadline's stream is already ending: one line per stream.
            if overdue_at <= now and not deadline.expired():
                _log_cut(within_s)
                _expire(deadline)
        self._check = (
            loop.call_later(SEND_CHECK_EVERY_S, self._cut_stalled, loop) if self._sending else None
        )


class OpenStream(QuietDeadline):
    """One open stream's deadline, counted in :class:`OpenStreams` for the block."""

    __slots__ = ("_streams",)

    def __init__(self, streams: OpenStreams, max_s: float | None) -> None:
        when = None if max_s is None else asyncio.get_running_loop().time() + max_s
        super().__init__(when)
        self._streams = streams

    async def __aenter__(self) -> asyncio.Timeout:
        deadline = await super().__aenter__()
        self._streams._deadlines.add(deadline)
        if self._streams.closing:
            _expire(deadline)
        return deadline

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        self._streams._deadlines.discard(self._timeout)
        return await super().__aexit__(exc_type, exc, tb)


def _expire(deadline: asyncio.Timeout) -> None:
    if not deadline.expired():
        deadline.reschedule(asyncio.get_running_loop().time())


# X-Accel-Buffering: a proxy that buffers responses would hold events back; no-transform:
# a proxy must not compress (and so buffer) the stream.
HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)


Batches = AsyncGenerator[Sequence[Frame] | None]
"""What a stream sends: batches of encoded frames, ``None`` for a quiet period."""


class EventStream:
    """A ``text/event-stream`` response (an ASGI app): ``prelude``, then each batch the
    follower yields, in one write per batch; a keep-alive comment for each quiet period.

    The follower's ``BackendUnavailable`` ends the stream quietly (the headers are gone;
    the client resumes from its last id). One method sends it all: every frame of a
    call chain here is held by every open stream, so there are as few as can be.
    """

    __slots__ = (
        "_batches",
        "_labels",
        "_max_s",
        "_on_close",
        "_prelude",
        "_run_id",
        "_send_timeout_s",
        "_streams",
    )

    def __init__(
        self,
        batches: Batches | None,
        *,
        prelude: bytes,
        streams: OpenStreams,
        labels: tuple[str, str],
        send_timeout_s: float,
        run_id: str | None = None,
        max_s: float | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._batches = batches
        self._prelude = prelude
        self._streams = streams
        self._run_id = run_id  # for the log
        self._labels = labels  # (role, instance), for the stream metrics
        self._send_timeout_s = send_timeout_s
        self._max_s = max_s
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream until the run ends, the client leaves, the server closes,
        ``max_s`` passes or the client stops reading; then ``on_close``."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": list(HEADERS)})
            if await self._send_prelude(send) and self._batches is not None:
                # Counted while it follows a run (not the outage hint, which only ends).
                active = ACTIVE_STREAMS.labels(*self._labels)
                active.inc()
                try:
                    await self._follow(receive, send, self._batches)
                finally:
                    active.dec()
        finally:
            if self._on_close is not None:  # e.g. the principal's stream lease
                with contextlib.suppress(Exception):
                    await finish_shielded(self._on_close(), within_s=CLOSE_TIMEOUT_S)
        # End the chunked body cleanly, so the client sees the stream end and resumes;
        # after the lease and the gauge are released, so that a client resuming at once
        # is not refused for its own old stream, and sees the gauge down.
        end = {"type": "http.response.body", "body": b"", "more_body": False}
        await completes_within(send(end), self._send_timeout_s)

    async def _follow(self, receive: Receive, send: Send, batches: Batches) -> None:
        delivered = EVENTS_DELIVERED.labels(*self._labels)
        # The client leaving, the server closing or RUNSTREAM_STREAM_MAX_S expire the
        # deadline: the block ends there, and the client resumes from its last id.
        # collapse_excgroups: an unexpected error is logged as itself, not as a group.
        with collapse_excgroups():
            async with (
                self._streams.open(self._max_s) as deadline,
                asyncio.TaskGroup() as tasks,
                contextlib.aclosing(batches) as frames,
            ):
                watcher = tasks.create_task(_until_disconnect(receive, deadline), name="sse-exit")
                try:
                    async for batch in frames:
                        await self._streams.send(
                            send, _body(_encoded(batch)), deadline, self._send_timeout_s
                        )
                        if batch is not None:
                            delivered.inc(len(batch))
                except BackendUnavailable as exc:
                    log.warning("stream ended early", run_id=self._run_id, error=str(exc))
                finally:
                    watcher.cancel()

    async def _send_prelude(self, send: Send) -> bool:
        if await completes_within(send(_body(self._prelude)), self._send_timeout_s):
            return True
        _log_cut(self._send_timeout_s)
        return False


def _log_cut(after_s: float) -> None:
    # One line, no traceback: a slow or vanished reader is routine.
    log.info("stream ended: the client stopped reading", after_s=after_s)


def _body(body: bytes) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": True}


def _encoded(batch: Sequence[Frame] | None) -> bytes:
    """One write for a batch (each frame was encoded once for every reader of the
    process), or the keep-alive comment for a quiet period."""
    if batch is None:
        return PING
    return batch[0].sse if len(batch) == 1 else b"".join(frame.sse for frame in batch)


async def _until_disconnect(receive: Receive, deadline: asyncio.Timeout) -> None:
    """Wait for the client to go, then end the stream (its subscription goes with it)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    _expire(deadline)
