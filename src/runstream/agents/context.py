"""What an agent receives besides its input: the run's identity and its stop signal.

An agent is an async generator function ``agent(ctx, input)`` that yields JSON-object
events (docs/agents.md). The worker builds one :class:`RunContext` per run and
calls :meth:`RunContext.request_stop` when the run is asked to stop; a cooperative agent
notices through :attr:`RunContext.stop_requested` or :meth:`RunContext.wait_stopped`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias


@dataclass
class RunContext:
    """The run an agent is executing, and a way to learn that it should stop."""

    run_id: str
    thread_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    @property
    def stop_requested(self) -> bool:
        """Whether the run has been asked to stop."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Signal the agent to stop (called by the worker; idempotent)."""
        self._stop.set()

    # A timeout parameter (not asyncio.timeout around the call) because a timeout here
    # is the normal outcome, reported as False, not an error to catch.
    async def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until a stop is requested or ``timeout`` seconds pass.

        Return True if the stop was requested (possibly before the call), False on
        timeout. Agents use this instead of ``asyncio.sleep`` so that a stop wakes them.
        """
        if self._stop.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._stop.wait()
        except TimeoutError:
            # The stop may have landed in the same loop iteration as the timeout.
            return self._stop.is_set()
        return True


Agent: TypeAlias = Callable[[RunContext, dict[str, Any]], AsyncIterator[dict[str, Any]]]
"""An agent: an async generator function ``async def agent(ctx, input): yield {...}``."""
