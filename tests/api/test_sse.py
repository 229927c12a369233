"""api/sse.py: a stream's sends are watched by one check for the process, not a timer
each, and a send that never completes still ends its stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
import structlog
from starlette.types import Message

from runstream.api import sse
from runstream.api.sse import EventStream, OpenStreams
from runstream.streams.frames import Frame
from tests.conftest import wait_until

CUT = "stream ended: the client stopped reading"


async def _pings(count: int) -> AsyncGenerator[Sequence[Frame] | None]:
    for _ in range(count):
        yield None  # a quiet period: one keep-alive write each


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _stream(streams: OpenStreams, count: int, send_timeout_s: float = 5.0) -> EventStream:
    return EventStream(
        _pings(count),
        prelude=b"retry: 1000\n\n",
        streams=streams,
        labels=("api", "test"),
        send_timeout_s=send_timeout_s,
    )


class CountingTimers:
    """Counts the timers asyncio's loop is asked for while installed (its ``call_later``
    and ``asyncio.timeout`` both go through ``call_at``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(loop, asyncio.BaseEventLoop)  # not uvloop: its call_later is its own
        self.count = 0
        call_at = loop.call_at

        def counted(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            self.count += 1
            return call_at(*args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counted)


async def test_a_thousand_sends_that_complete_at_once_cost_one_timer_not_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = OpenStreams()
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])

    timers = CountingTimers(asyncio.get_running_loop(), monkeypatch)
    await _stream(streams, 1000)({}, _never_disconnects, send)
    assert sent.count(sse.PING) == 1000 and sent[-1] == b""  # every write, then the end
    # The prelude's and the end's sends have a timeout each, and the check of the
    # follow loop's 1,000 sends is armed once (a timer each was 1,000 more).
    assert timers.count <= 3
    streams.stop_checking()


async def test_a_send_that_never_completes_ends_its_stream_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "SEND_CHECK_EVERY_S", 0.05)
    streams = OpenStreams()
    writes = 0
    stuck = asyncio.Event()

    async def send(message: Message) -> None:
        nonlocal writes
        if message.get("more_body") and message["body"] == sse.PING:
            writes += 1
            if writes == 3:  # the client's buffer is full from here on
                stuck.set()
                await asyncio.Event().wait()

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(
            _stream(streams, 10, send_timeout_s=0.2)({}, _never_disconnects, send), 5
        )
    assert stuck.is_set() and writes == 3
    assert [e["event"] for e in logs if e["event"] == CUT] == [CUT]
    assert not streams._sending and not streams._deadlines
    streams.stop_checking()
    assert streams._check is None


async def test_the_check_of_sends_is_not_armed_once_no_send_is_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "SEND_CHECK_EVERY_S", 0.01)
    streams = OpenStreams()

    async def send(message: Message) -> None:
        return None

    await _stream(streams, 5)({}, _never_disconnects, send)
    assert streams._check is not None  # armed by the first send, due after the last
    await wait_until(lambda: streams._check is None, timeout=5)
