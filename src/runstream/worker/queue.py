"""The task queue (streaq, chosen in docs/decisions.md), configured for runstream.

Everything runstream asks of the queue is here: a bounded, named connection pool, JSON
instead of pickle on the wire, one task (``execute_run``) whose id is the run id (so an
enqueue repeated while the task exists is a no-op), and a worker that stops on our
shutdown event instead of installing its own signal handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import streaq
import structlog
from anyio import CancelScope
from coredis.exceptions import RedisError as CoredisError
from coredis.exceptions import ResponseError as CoredisResponseError
from streaq import StreaqRetry, Worker
from streaq.types import Streaq

from runstream.errors import BackendUnavailable, TooManyConnections
from runstream.streams.keys import client_name, queue_prefix

log = structlog.get_logger(__name__)


async def _enqueue(queue: Worker, run_id: str) -> None:
    task = queue.enqueue_unsafe(TASK_NAME, run_id)
    task.id = run_id
    await task


async def keep_queue(queue: RunQueue, interval: float) -> None:
    """Keep the queue usable through Redis restarts: reconnect it and reload its functions."""
    while True:
        try:
            await queue.ensure_functions()
        except (CoredisError, OSError, TimeoutError) as exc:
            log.debug("queue keeper: Redis unavailable", error=str(exc))
        await asyncio.sleep(interval)


TASK_NAME = "runstream.execute_run"
QUEUE_CONNECTIONS = 4  # DESIGN.md section 6: the queue library holds at most 4
# What each role actually uses, so the count at rest is also the count under load (a
# coredis pool never closes a connection it opened): a worker keeps one blocked in
# XREADGROUP, one for its timers and one for acknowledgements and lease renewals; a
# producer's commands are pipelined on a single connection.
QUEUE_CONNECTIONS_BY_ROLE = {"worker": 3, "api": 1}


def _dumps(data: Any) -> bytes:
    # A failed task's result is an exception: keep its text rather than fail to store it.
    return orjson.dumps(data, default=repr)


class RunQueue(Worker):
    """A streaq Worker whose shutdown is driven by :meth:`stop`, never by OS signals.

    streaq installs SIGINT/SIGTERM handlers in ``signal_handler`` and removes the
    process's own when it exits; the process owns its signals, so that hook is replaced.
    """

    def __init__(
        self, redis_url: str, *, role: str, instance: str, queue_name: str, concurrency: int = 1
    ) -> None:
        super().__init__(
            redis_url=redis_url,
            redis_kwargs={
                "client_name": client_name(role, instance, "queue"),
                "max_connections": QUEUE_CONNECTIONS_BY_ROLE.get(role, QUEUE_CONNECTIONS),
            },
            queue_name=queue_prefix(queue_name),
            concurrency=concurrency,
            serializer=_dumps,
            deserializer=orjson.loads,
            # Lease renewed every 0.9 x idle_timeout; a dead worker's task comes back
            # after 1-2 x idle_timeout, and runstream's own sweeper ends it "worker lost".
            idle_timeout=10,
            # Runs finish their own shutdown grace (executor); this only bounds a stuck one.
            grace_period=0,
            id=instance,
        )
        self._stop = asyncio.Event()

    async def signal_handler(self, scope: CancelScope) -> None:
        """Stop fetching when :meth:`stop` is called; running tasks carry on (they are
        shielded by streaq) and the executor brings them to an end within its grace."""
        await self._stop.wait()
        scope.cancel("runstream worker shutting down")

    def stop(self) -> None:
        """Take no more runs; ``run_async`` returns once the running ones are done."""
        self._stop.set()

    async def ensure_functions(self) -> bool:
        """Load streaq's Lua library again if Redis lost it (a restart); True if it did.

        streaq loads it only when it starts, and every enqueue or acknowledgement fails
        with "Function not found" until it is back.
        """
        if await self.redis.function_list(libraryname=Streaq.NAME):
            return False
        code = (Path(streaq.__file__).parent / "lua" / "streaq.lua").read_text()
        self._lib = await Streaq(self.redis, code=code, replace=True)
        log.warning("queue functions reloaded (Redis lost them)", queue=self.queue_name)
        return True

    def register_executor(self, execute: Callable[[str], Awaitable[None]]) -> None:
        """Make ``execute(run_id)`` the body of the queue's one task."""

        async def execute_run(run_id: str) -> None:
            try:
                await execute(run_id)
            except BackendUnavailable as exc:
                # Nothing was started (the run is still queued): try again shortly.
                log.warning("run not started; retrying", run_id=run_id, error=str(exc))
                raise StreaqRetry(str(exc), delay=1) from exc

        self.task(name=TASK_NAME, timeout=None, max_tries=20)(execute_run)


async def enqueue_run(queue: RunQueue, run_id: str) -> None:
    """Queue the execution of ``run_id``; a no-op while a task for it already exists.

    Raises BackendUnavailable (TooManyConnections for an exhausted budget) when the
    queue's Redis cannot take it.
    """
    try:
        try:
            await _enqueue(queue, run_id)
        except CoredisResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
            await queue.ensure_functions()  # Redis restarted since the queue started
            await _enqueue(queue, run_id)
    except (CoredisError, OSError, TimeoutError) as exc:
        text = str(exc)
        if "max number of clients" in text.lower() or "too many connections" in text.lower():
            log.error("Too many connections", purpose="queue", cause=text)
            raise TooManyConnections(f"Too many connections: {text}") from exc
        raise BackendUnavailable(f"queue unavailable: {text}") from exc
