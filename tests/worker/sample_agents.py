"""Agents that misbehave, registered through RUNSTREAM_AGENTS in the worker tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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
