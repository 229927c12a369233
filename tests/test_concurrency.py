"""concurrency.py: a block that ends quietly at its deadline, and one TaskGroup error
re-raised as itself."""

from __future__ import annotations

import asyncio

import pytest

from runstream.api.sse import OpenStreams
from runstream.concurrency import QuietDeadline, collapse_excgroups


async def test_a_quiet_deadline_ends_its_block_without_an_error() -> None:
    loop = asyncio.get_running_loop()
    reached = False
    async with QuietDeadline(loop.time() + 0.05):
        await asyncio.sleep(30)
        reached = True
    assert not reached

    async with QuietDeadline() as deadline:  # unset, then ended by whoever holds it
        loop.call_soon(deadline.reschedule, loop.time())
        await asyncio.sleep(30)


async def test_a_quiet_deadline_lets_other_errors_and_cancellation_through() -> None:
    with pytest.raises(TimeoutError):  # a timeout of the block's own, not the deadline
        async with QuietDeadline():
            raise TimeoutError
    task = asyncio.create_task(_sleep_quietly())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _sleep_quietly() -> None:
    async with QuietDeadline():
        await asyncio.sleep(30)


async def test_open_streams_end_now_and_from_now_on_once_closing() -> None:
    streams = OpenStreams()
    holder = asyncio.create_task(_hold(streams))
    await asyncio.sleep(0)
    streams.close_all()
    await asyncio.wait_for(holder, 5)
    await asyncio.wait_for(_hold(streams), 5)  # opened after close_all: ended at once
    assert not streams._deadlines


async def _hold(streams: OpenStreams) -> None:
    async with streams.open():
        await asyncio.sleep(30)


def test_one_error_of_a_group_is_re_raised_as_itself() -> None:
    with pytest.raises(KeyError), collapse_excgroups():
        raise ExceptionGroup("one", [KeyError("k")])
    with pytest.raises(ExceptionGroup), collapse_excgroups():
        raise ExceptionGroup("two", [KeyError("k"), ValueError("v")])
