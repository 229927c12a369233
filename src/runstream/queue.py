"""The task queue (streaq, chosen in docs/decisions.md), as one of a process's resources.

:func:`open_queue` (entered by ``open_resources``) gives a :class:`RunQueue`:

- in the API, a producer: its named connection is opened on entry and kept usable
  through Redis restarts by a helper task; :meth:`RunQueue.enqueue` queues a run.
- in a worker, a consumer: :meth:`RunQueue.consume` runs streaq's consumer (a fresh one
  whenever a Redis failure ends it) until :meth:`RunQueue.stop`; enqueues (the sweeper's)
  go through the consumer's connection, so a worker holds no extra one.

Everything runstream asks of the queue is here: a bounded, named connection pool, JSON
instead of pickle on the wire, one task (``execute_run``) whose id is the run id (an
enqueue repeated while the task exists is a no-op), and a consumer that stops when told
instead of installing its own signal handlers. coredis's errors become runstream's here
(:class:`QueueErrors`); nothing above this module sees one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import streaq
import structlog
from anyio import CancelScope
from coredis import ClusterConnectionPool
from coredis.connection import TCPLocation
from coredis.exceptions import RedisError as CoredisError
from coredis.exceptions import ResponseError as CoredisResponseError
from streaq import StreaqRetry, Worker
from streaq.types import Streaq

from runstream.budget import ErrorMap, is_budget_message
from runstream.concurrency import helper_task
from runstream.config import Settings
from runstream.errors import BackendUnavailable, describe
from runstream.streams.keys import client_name, queue_prefix

log = structlog.get_logger(__name__)

TASK_NAME: Final = "runstream.execute_run"
QUEUE_CONNECTIONS: Final = 4  # the budget: the queue library holds at most 4
# What each role actually uses, so the count at rest is also the count under load (a
# coredis pool never closes a connection it opened): a worker keeps one blocked in
# XREADGROUP, one for its timers and one for acknowledgements and lease renewals; a
# producer's commands are pipelined on a single connection.
QUEUE_CONNECTIONS_BY_ROLE: Final = {"worker": 3, "api": 1}
RESTART_BACKOFF_MAX_S: Final = 5.0

Execute = Callable[[str], Awaitable[None]]


class QueueErrors(ErrorMap):
    """Translates coredis's (and the socket's) errors into runstream's."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> None:
        if isinstance(exc, CoredisError | OSError | TimeoutError):
            text = str(exc) or type(exc).__name__
            if is_budget_message(text):
                raise self.exhausted(f"Too many connections: {text}", "queue") from exc
            raise BackendUnavailable(f"queue unavailable: {text}", dependency="the queue") from exc


class RunQueue:
    """The queue of one process: a producer (API) or a consumer (worker).

    Made by :func:`open_queue`; only a worker's may :meth:`consume`.
    """

    def __init__(self, settings: Settings, *, role: str) -> None:
        self._settings = settings
        self._role = role
        self._errors = QueueErrors(role=role, instance=settings.instance)
        self._stopping = asyncio.Event()
        self._streaq: _Streaq | None = None  # the connection enqueues go through

    async def enqueue(self, run_id: str) -> None:
        """Queue the execution of ``run_id``; a no-op while a task for it already exists.

        Raises BackendUnavailable (TooManyConnections for an exhausted budget) when the
        queue's Redis cannot take it, or a worker's consumer is not connected.
        """
        queue = self._streaq
        if queue is None:
            raise BackendUnavailable("queue unavailable: not connected", dependency="the queue")
        with self._errors:
            try:
                await _enqueue(queue, run_id)
            except CoredisResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                await queue.ensure_functions()  # Redis restarted since the queue started
                await _enqueue(queue, run_id)

    async def consume(self, execute: Execute) -> None:
        """Execute queued runs with ``execute(run_id)`` until :meth:`stop` is called.

        streaq loads its functions and creates its consumer group only when it starts,
        so a Redis restart makes its next call fail and its consumer end: a fresh one is
        started, with a bounded backoff. Runs in progress are shielded by streaq and
        finish first; runs that were queued are brought back by the worker's sweeper.
        """
        if self._role != "worker":
            raise RuntimeError("only a worker's queue consumes")
        backoff = 0.1
        while not self._stopping.is_set():
            queue = self._streaq = self._new_streaq(execute)
            try:
                await queue.run_async()
                return
            except Exception as exc:  # a Redis restart or outage: start again
                if self._stopping.is_set():
                    return
                log.error("queue consumer ended by an error; restarting", error=describe(exc))
            finally:
                self._streaq = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)

    def stop(self) -> None:
        """Take no more runs; :meth:`consume` returns once the running ones are done."""
        self._stopping.set()
        if self._streaq is not None:
            self._streaq.stop()

    def _new_streaq(self, execute: Execute | None = None) -> _Streaq:
        settings = self._settings
        queue = _Streaq(
            settings.queue_redis_url or settings.redis_url,
            # RUNSTREAM_QUEUE_REDIS_URL is a standalone Redis, even beside a cluster.
            cluster=settings.redis_cluster and not settings.queue_redis_url,
            role=self._role,
            instance=self._settings.instance,
            queue_name=self._settings.queue_name,
            concurrency=self._settings.worker_concurrency if execute else 1,
        )
        if execute is not None:
            queue.register_executor(execute)
        return queue

    async def _keep_producer(self, queue: _Streaq) -> None:
        """Keep the producer usable through Redis restarts: reload its functions."""
        interval = self._settings.redis_idle_s / 2
        while True:
            try:
                await queue.ensure_functions()
            except (CoredisError, OSError, TimeoutError) as exc:
                log.debug("queue keeper: Redis unavailable", error=describe(exc))
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def open_queue(settings: Settings, *, role: str) -> AsyncIterator[RunQueue]:
    """The process's queue: a connected producer, or (``role="worker"``) a consumer.

    Raises BackendUnavailable when a producer cannot connect.
    """
    queue = RunQueue(settings, role=role)
    if role == "worker":
        try:
            yield queue
        finally:
            queue.stop()
        return
    producer = queue._new_streaq()
    async with contextlib.AsyncExitStack() as stack:
        with queue._errors:
            await stack.enter_async_context(producer)
        keeper = queue._keep_producer(producer)
        await stack.enter_async_context(helper_task(keeper, name="runstream-queue-keeper"))
        queue._streaq = producer
        try:
            yield queue
        finally:
            queue._streaq = None


class _Streaq(Worker):
    """A streaq Worker whose shutdown is driven by :meth:`stop`, never by OS signals.

    streaq installs SIGINT/SIGTERM handlers in ``signal_handler`` and removes the
    process's own when it exits; the process owns its signals, so that hook is replaced.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        cluster: bool,
        role: str,
        instance: str,
        queue_name: str,
        concurrency: int,
    ) -> None:
        name = client_name(role, instance, "queue")
        limit = QUEUE_CONNECTIONS_BY_ROLE.get(role, QUEUE_CONNECTIONS)
        pool = None
        redis_kwargs: dict[str, Any] = {"client_name": name, "max_connections": limit}
        if cluster:
            # The whole queue lives in one slot (keys.queue_prefix), so on one master; the
            # budget is per node, and in practice all on that one.
            url = urlsplit(redis_url)
            pool = ClusterConnectionPool(
                [TCPLocation(url.hostname or "127.0.0.1", url.port or 6379)],
                max_connections=limit,
                max_connections_per_node=True,
                client_name=name,
                username=url.username,
                password=url.password,
                decode_responses=True,
            )
            redis_kwargs = {}
        super().__init__(
            redis_url=redis_url,
            redis_pool=pool,
            redis_kwargs=redis_kwargs,
            queue_name=queue_prefix(queue_name, cluster=cluster),
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

    def register_executor(self, execute: Execute) -> None:
        """Make ``execute(run_id)`` the body of the queue's one task."""

        async def execute_run(run_id: str) -> None:
            # An error that leaves ``execute`` means the run did not start (once started,
            # the executor ends it whatever happens), so trying again is safe: a run found
            # running is ended as an orphan. Without the retry, streaq records the task as
            # failed and the run would stay queued for good.
            try:
                await execute(run_id)
            except BackendUnavailable as exc:
                log.warning("run not started; retrying", run_id=run_id, error=str(exc))
                raise StreaqRetry(str(exc), delay=1) from exc
            except Exception as exc:
                log.exception("run not started (unexpected error); retrying", run_id=run_id)
                raise StreaqRetry(describe(exc), delay=1) from exc

        self.task(name=TASK_NAME, timeout=None, max_tries=20)(execute_run)


async def _enqueue(queue: Worker, run_id: str) -> None:
    task = queue.enqueue_unsafe(TASK_NAME, run_id)
    task.id = run_id
    await task


def _dumps(data: Any) -> bytes:
    # A failed task's result is an exception: keep its text rather than fail to store it.
    return orjson.dumps(data, default=repr)
