"""The task queue (streaq, chosen in docs/decisions.md), as one of a process's resources.

:func:`open_queue` (entered by ``open_resources``) gives a :class:`RunQueue`:

- :meth:`RunQueue.enqueue` queues a run, in every role, through ``producer``: streaq's
  own Lua function called over the process's redis-py command client, so enqueueing
  costs no connection of its own and the API never loads streaq or coredis;
- in a worker, :meth:`RunQueue.consume` runs streaq's consumer (``consumer``) until
  :meth:`RunQueue.stop`.

One task (``execute_run``) whose id is the run id: an enqueue repeated while the task
exists is a no-op. JSON, not pickle, on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Final

from runstream.config import Settings
from runstream.queue.producer import TaskProducer
from runstream.streams.connection import CommandClient, RedisErrors, open_redis
from runstream.streams.keys import queue_keys

if TYPE_CHECKING:
    from runstream.queue.consumer import Consumer

TASK_NAME: Final = "runstream.execute_run"  # the consumer registers its task by this name
QUEUE_CONNECTIONS: Final = 4
"""The queue's budget per process: a worker's consumer holds 3 (``consumer``), and a
producer 1 more only when the queue has its own Redis (``RUNSTREAM_QUEUE_REDIS_URL``)."""
QUEUE_CONNECTIONS_BY_ROLE: Final = {"worker": 3, "api": 0}
"""What each role holds at rest and under load with the queue on the main Redis."""

Execute = Callable[[str], Awaitable[None]]


class RunQueue:
    """The queue of one process; made by :func:`open_queue`, consumed only by a worker."""

    def __init__(self, settings: Settings, *, role: str, producer: TaskProducer) -> None:
        self._settings = settings
        self._role = role
        self._producer = producer
        self._consumer: Consumer | None = None
        self._stopped = False

    async def enqueue(self, run_id: str) -> None:
        """Queue the execution of ``run_id``; a no-op while a task for it already exists.

        Raises BackendUnavailable (TooManyConnections for an exhausted budget) when the
        queue's Redis cannot take it.
        """
        await self._producer.publish(run_id, TASK_NAME, run_id)

    async def consume(self, execute: Execute) -> None:
        """Execute queued runs with ``execute(run_id)`` until :meth:`stop` is called."""
        if self._role != "worker":
            raise RuntimeError("only a worker's queue consumes")
        # Imported here, not above: streaq brings coredis and beartype (about 14 MiB),
        # which only a consumer needs.
        from runstream.queue.consumer import Consumer

        if self._stopped:
            return
        self._consumer = Consumer(self._settings)
        await self._consumer.consume(execute)

    def stop(self) -> None:
        """Take no more runs; :meth:`consume` returns once the running ones are done."""
        self._stopped = True
        if self._consumer is not None:
            self._consumer.stop()


@asynccontextmanager
async def open_queue(
    settings: Settings, *, role: str, redis: CommandClient
) -> AsyncIterator[RunQueue]:
    """The process's queue, enqueueing through ``redis`` (the process's command client),
    or through one connection of its own to ``RUNSTREAM_QUEUE_REDIS_URL`` when set."""
    async with AsyncExitStack() as stack:
        cluster = settings.redis_cluster
        if settings.queue_redis_url:
            # A standalone Redis for the queue alone, even beside a cluster.
            cluster = False
            redis = await stack.enter_async_context(
                open_redis(
                    settings.queue_redis_url,
                    role=role,
                    instance=settings.instance,
                    purpose="queue",
                    max_connections=1,
                    timeout=settings.redis_timeout_s,
                    idle_s=settings.redis_idle_s,
                )
            )
        errors = RedisErrors(role=role, instance=settings.instance)
        keys = queue_keys(settings.queue_name, cluster=cluster)
        queue = RunQueue(settings, role=role, producer=TaskProducer(redis, keys, errors))
        try:
            yield queue
        finally:
            queue.stop()
