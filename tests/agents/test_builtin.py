"""The built-in agents ``echo`` and ``scripted``, and the RunContext stop signal."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import pytest

from runstream.agents.builtin import echo, scripted
from runstream.agents.context import RunContext
from runstream.errors import AgentError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

# Enough loop turns for an agent that honours a stop to finish once it is requested:
# it needs two (start the task, return from the already-set event). See _settled.
SETTLE_TURNS = 10


async def collect(events: AsyncGenerator[dict[str, Any], None]) -> list[dict[str, Any]]:
    """Every event of an agent, within a deadline so a bug hangs no test."""
    async with asyncio.timeout(5), aclosing(events):
        return [event async for event in events]


async def _settled(task: asyncio.Task[Any]) -> bool:
    """Give the loop SETTLE_TURNS turns (no wall clock); return whether ``task`` is done."""
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)
    return task.done()


async def test_wait_stopped_returns_false_on_timeout() -> None:
    assert await RunContext(run_id="r").wait_stopped(0.01) is False


async def test_wait_stopped_returns_true_when_stop_requested_while_waiting() -> None:
    ctx = RunContext(run_id="r")
    waiter = asyncio.create_task(ctx.wait_stopped())
    assert not await _settled(waiter)
    ctx.request_stop()
    async with asyncio.timeout(5):
        assert await waiter is True
    assert ctx.stop_requested


async def test_a_stop_ends_a_timed_wait_at_once_and_leaves_no_timer() -> None:
    ctx = RunContext(run_id="r")
    waiters = [asyncio.create_task(ctx.wait_stopped(30)) for _ in range(3)]
    assert not any([await _settled(w) for w in waiters])
    ctx.request_stop()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*waiters) == [True, True, True]
    assert not ctx._sleepers
    cancelled = asyncio.create_task(RunContext(run_id="r").wait_stopped(30))
    assert not await _settled(cancelled)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_echo_yields_one_token_per_word() -> None:
    events = await collect(echo(RunContext(run_id="r"), {"text": "  hello \n big\tworld "}))
    assert events == [
        {"type": "token", "text": "hello"},
        {"type": "token", "text": "big"},
        {"type": "token", "text": "world"},
    ]


async def test_echo_waits_interval_between_words() -> None:
    events = await collect(echo(RunContext(run_id="r"), {"text": "a b", "interval_ms": 1}))
    assert [event["text"] for event in events] == ["a", "b"]


async def test_echo_stop_wakes_it_between_words() -> None:
    ctx = RunContext(run_id="r")
    async with aclosing(echo(ctx, {"text": "a b c", "interval_ms": 60_000})) as events:
        assert await anext(events) == {"type": "token", "text": "a"}
        pending = asyncio.create_task(anext(events))
        assert not await _settled(pending)  # waiting out the hour-long interval
        ctx.request_stop()
        async with asyncio.timeout(5):
            with pytest.raises(StopAsyncIteration):
                await pending


async def test_echo_yields_nothing_once_stopped() -> None:
    ctx = RunContext(run_id="r")
    ctx.request_stop()
    assert await collect(echo(ctx, {"text": "a b c"})) == []


async def test_echo_rejects_bad_input_with_agent_error() -> None:
    with pytest.raises(AgentError, match=r"^echo: text: Field required$"):
        await collect(echo(RunContext(run_id="r"), {}))


async def test_scripted_yields_count_ticks_with_payload() -> None:
    events = await collect(scripted(RunContext(run_id="r"), {"count": 3, "payload_bytes": 4}))
    assert events == [{"type": "tick", "n": n, "payload": "xxxx"} for n in (1, 2, 3)]


async def test_scripted_with_zero_count_yields_nothing() -> None:
    assert await collect(scripted(RunContext(run_id="r"), {"count": 0})) == []


async def test_scripted_sleeps_interval_before_each_tick() -> None:
    events = await collect(scripted(RunContext(run_id="r"), {"count": 2, "interval_ms": 1}))
    assert [event["n"] for event in events] == [1, 2]
    assert all(event["payload"] == "" for event in events)


async def test_scripted_fail_after_zero_raises_before_first_tick() -> None:
    events = scripted(RunContext(run_id="r"), {"count": 3, "fail_after": 0})
    with pytest.raises(RuntimeError, match=r"^scripted failure after 0 ticks$"):
        await anext(events)


async def test_scripted_fail_after_k_raises_after_k_ticks() -> None:
    seen: list[int] = []
    events = scripted(RunContext(run_id="r"), {"count": 5, "fail_after": 2, "hang": True})
    with pytest.raises(RuntimeError, match=r"^scripted failure after 2 ticks$"):
        async for event in events:
            seen.append(event["n"])
    assert seen == [1, 2]


@pytest.mark.parametrize("fail_after", [3, 4])
async def test_scripted_fail_after_count_never_raises(fail_after: int) -> None:
    events = await collect(scripted(RunContext(run_id="r"), {"count": 3, "fail_after": fail_after}))
    assert [event["n"] for event in events] == [1, 2, 3]


async def test_scripted_stop_wakes_it_between_ticks() -> None:
    ctx = RunContext(run_id="r")
    async with aclosing(scripted(ctx, {"count": 5, "interval_ms": 60_000})) as events:
        pending = asyncio.create_task(anext(events))
        assert not await _settled(pending)  # sleeping the hour before tick 1
        ctx.request_stop()
        async with asyncio.timeout(5):
            with pytest.raises(StopAsyncIteration):
                await pending


async def test_scripted_stops_between_ticks_without_interval() -> None:
    ctx = RunContext(run_id="r")
    seen: list[int] = []
    async with asyncio.timeout(5):
        async for event in scripted(ctx, {"count": 1_000}):
            seen.append(event["n"])
            if event["n"] == 2:
                ctx.request_stop()
    assert seen == [1, 2]


async def test_scripted_hang_returns_when_stop_requested() -> None:
    ctx = RunContext(run_id="r")
    async with aclosing(scripted(ctx, {"count": 1, "hang": True})) as events:
        assert (await anext(events))["n"] == 1
        pending = asyncio.create_task(anext(events))
        assert not await _settled(pending)  # hanging after the last tick
        ctx.request_stop()
        assert await _settled(pending)
        with pytest.raises(StopAsyncIteration):
            await pending


async def test_scripted_ignore_stop_keeps_ticking_after_stop() -> None:
    ctx = RunContext(run_id="r")
    ctx.request_stop()
    events = await collect(scripted(ctx, {"count": 3, "ignore_stop": True}))
    assert [event["n"] for event in events] == [1, 2, 3]


async def test_scripted_ignore_stop_keeps_hanging_until_cancelled() -> None:
    ctx = RunContext(run_id="r")
    events = scripted(ctx, {"count": 1, "hang": True, "ignore_stop": True})
    assert (await anext(events))["n"] == 1
    ctx.request_stop()
    pending = asyncio.create_task(anext(events))
    # The same number of turns is enough for the honouring agent to finish (see
    # test_scripted_hang_returns_when_stop_requested); this one must still hang.
    assert not await _settled(pending)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    with pytest.raises(StopAsyncIteration):  # cancellation ended the generator
        await anext(events)


async def test_scripted_rejects_bad_input_with_agent_error() -> None:
    with pytest.raises(AgentError, match=r"^scripted: count: Input should be a valid integer"):
        await collect(scripted(RunContext(run_id="r"), {"count": "3"}))
