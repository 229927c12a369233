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
    _sleepers: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)

    @property
    def stop_requested(self) -> bool:
        """Whether the run has been asked to stop."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Signal the agent to stop (called by the worker; idempotent)."""
        self._stop.set()
        for sleeper in self._sleepers:
            _wake(sleeper)

    async def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until a stop is requested or ``timeout`` seconds pass.

        Return True if the stop was requested (possibly before the call), False on
        timeout. Agents use this instead of ``asyncio.sleep`` so that a stop wakes them.
        """
        if self._stop.is_set():
            return True
        if timeout is None:
            await self._stop.wait()
            return True
        # A future and a timer, as asyncio.sleep itself: the timeout is the usual end of
        # an agent's pause, and an asyncio.timeout scope would end it by cancelling the
        # task (two exceptions per tick, 4 % of a busy worker's samples).
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)
        return self._stop.is_set()


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


Agent: TypeAlias = Callable[[RunContext, dict[str, Any]], AsyncIterator[dict[str, Any]]]
"""An agent: an async generator function ``async def agent(ctx, input): yield {...}``."""
