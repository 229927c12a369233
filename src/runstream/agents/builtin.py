"""The built-in agents, ``echo`` and ``scripted`` (docs/agents.md), and their inputs.

Each built-in has a strict pydantic input model so the API can reject a bad input with
422 before a run is queued; the agents validate again because the worker may receive
input that never went through the API.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runstream.errors import AgentError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    from runstream.agents.context import Agent, RunContext

# Bounded so that one request cannot ask for more than a run's default budget
# (RUNSTREAM_MAX_RUN_EVENTS, _BYTES, _S), and its payloads for a quarter of it: a demo
# agent must not be a way to fill Redis.
MAX_TEXT_CHARS: Final = 100_000
MAX_COUNT: Final = 100_000
MAX_PAYLOAD_BYTES: Final = 1_000_000
MAX_TOTAL_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
MAX_INTERVAL_MS: Final = 60_000
MAX_TOTAL_MS: Final = 3_600_000

ModelT = TypeVar("ModelT", bound=BaseModel)


class _StrictInput(BaseModel):
    # Strict: a JSON "3" or 3.5 is not a count, and an unknown key is a typo to report,
    # not something to ignore silently.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EchoInput(_StrictInput):
    """Input of ``echo``."""

    text: str = Field(max_length=MAX_TEXT_CHARS)
    interval_ms: float = Field(default=0, ge=0, le=MAX_INTERVAL_MS)


class ScriptedInput(_StrictInput):
    """Input of ``scripted``."""

    count: int = Field(ge=0, le=MAX_COUNT)
    interval_ms: float = Field(default=0, ge=0, le=MAX_INTERVAL_MS)
    payload_bytes: int = Field(default=0, ge=0, le=MAX_PAYLOAD_BYTES)
    fail_after: int | None = Field(default=None, ge=0)
    hang: bool = False
    ignore_stop: bool = False

    @model_validator(mode="after")
    def _bounded_in_total(self) -> ScriptedInput:
        if self.count * self.payload_bytes > MAX_TOTAL_PAYLOAD_BYTES:
            raise ValueError(f"count x payload_bytes must be at most {MAX_TOTAL_PAYLOAD_BYTES}")
        if self.count * self.interval_ms > MAX_TOTAL_MS:
            raise ValueError(f"count x interval_ms must be at most {MAX_TOTAL_MS} (an hour)")
        return self


def parse_input(agent: str, model: type[ModelT], input: object) -> ModelT:
    """Validate ``input`` against ``model``, or raise AgentError with one readable line.

    The line reads ``"<agent>: <field>: <problem>"``, e.g.
    ``"scripted: count: Input should be a valid integer"``.
    """
    try:
        return model.model_validate(input)
    except ValidationError as exc:
        raise AgentError(describe_validation_error(agent, exc)) from None


def describe_validation_error(agent: str, exc: ValidationError) -> str:
    """Summarise a pydantic error in one line: the first problem, and how many more."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "input"
    line = f"{agent}: {where}: {first['msg']}"
    if len(errors) > 1:
        more = len(errors) - 1
        line += f" (and {more} more error{'s' if more > 1 else ''})"
    return line


async def echo(ctx: RunContext, input: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """Yield ``{"type": "token", "text": word}`` per whitespace-separated word of ``text``.

    Waits ``interval_ms`` between words; returns early once a stop is requested.
    """
    args = parse_input("echo", EchoInput, input)
    for index, word in enumerate(args.text.split()):
        if index and await _pause(ctx, args.interval_ms, honour_stop=True):
            return
        if ctx.stop_requested:
            return
        yield {"type": "token", "text": word}


async def scripted(ctx: RunContext, input: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """Yield ``count`` ticks, for demos, load and fault tests (see :class:`ScriptedInput`).

    Before each tick it waits ``interval_ms``; after ``fail_after`` ticks it raises;
    with ``hang`` it waits after the ticks until stopped. A stop ends it promptly,
    unless ``ignore_stop``: then only cancelling its task ends it (the forced path).
    """
    args = parse_input("scripted", ScriptedInput, input)
    honour_stop = not args.ignore_stop
    payload = "x" * args.payload_bytes
    for n in range(1, args.count + 1):
        if args.fail_after == n - 1:
            raise RuntimeError(f"scripted failure after {n - 1} ticks")
        if await _pause(ctx, args.interval_ms, honour_stop=honour_stop):
            return
        yield {"type": "tick", "n": n, "payload": payload}
    if args.hang:
        await _hang(ctx, honour_stop=honour_stop)


async def _pause(ctx: RunContext, interval_ms: float, *, honour_stop: bool) -> bool:
    """Wait ``interval_ms``; return True if the agent should stop now."""
    seconds = interval_ms / 1000
    if not honour_stop:
        await asyncio.sleep(seconds)
        return False
    if seconds <= 0:
        # Still yield to the loop, so a tight loop of ticks lets the stop (and others) in.
        await asyncio.sleep(0)
        return ctx.stop_requested
    return await ctx.wait_stopped(seconds)


async def _hang(ctx: RunContext, *, honour_stop: bool) -> None:
    """Wait until stopped, or, ignoring the stop signal, until cancelled."""
    if honour_stop:
        await ctx.wait_stopped()
    else:
        await asyncio.Event().wait()  # never set: only cancellation ends this


BUILTINS: Final[Mapping[str, tuple[Agent, type[BaseModel]]]] = {
    "echo": (echo, EchoInput),
    "scripted": (scripted, ScriptedInput),
}
"""The always-registered agents, by name, with their input models."""
