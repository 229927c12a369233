"""Agents that misbehave, registered through RUNSTREAM_AGENTS in the worker tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runstream.agents import agent
from runstream.agents.context import RunContext


async def not_an_object(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "ok"}
    yield ["not", "an", "object"]


async def no_type(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"text": "where is my type"}


async def too_big(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "blob", "data": "x" * 5000}


async def not_json(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "thing", "value": object()}


async def forges_status(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "token", "text": "before"}
    yield {"type": "status", "status": "completed"}
    yield {"type": "token", "text": "after"}


async def forges_gap(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "gap", "from": 1, "to": 99}


async def leaks_a_secret(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    yield {"type": "token", "text": "connecting"}
    raise ConnectionError("could not reach postgresql://app:hunter2@db.internal/app")


class ShoutInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1000)


@agent(input=ShoutInput, description="Yields the text in capitals, word by word.")
async def shout(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    for word in ShoutInput.model_validate(input).text.split():
        yield {"type": "token", "text": word.upper()}


async def documented(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    """Says hello.

    More words that are not the description.
    """
    yield {"type": "token", "text": "hello"}


async def mixed_types(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    """Yields event types a page cannot know in advance, and text that looks like HTML."""
    yield {"type": "thought", "text": "thinking"}
    yield {"type": "token", "text": "<img src=x onerror=alert(1)>"}
    yield {"type": "tool_call", "name": "search"}
    yield {"type": "token", "text": "done"}


async def swallows_a_cancel(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[Any]:
    """Yields once, then swallows the first cancellation (a careless ``except``)."""
    yield {"type": "token", "text": "started"}
    swallowed = False
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True
