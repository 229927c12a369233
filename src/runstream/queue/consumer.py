"""The queue's consumer: streaq's Worker, run by a worker process until it is told to stop.

Imported only by a worker (``RunQueue.consume``): streaq brings coredis and beartype,
which the API does without (it enqueues through ``producer``). The consumer holds its
own bounded, named coredis pool; coredis's errors never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import structlog
from anyio import CancelScope
from coredis import ClusterConnectionPool
from coredis.connection import TCPLocation
from streaq import StreaqRetry, Worker

from runstream.config import Settings
from runstream.errors import BackendUnavailable, describe
from runstream.queue import TASK_NAME
from runstream.streams.keys import client_name, queue_prefix

log = structlog.get_logger(__name__)

# What a consumer uses, so the count at rest is also the count under load (a coredis
# pool never closes a connection it opened): one blocked in XREADGROUP, one for its
# timers and one for acknowledgements and lease renewals.
CONSUMER_CONNECTIONS: Final = 3
RESTART_BACKOFF_MAX_S: Final = 5.0

Execute = Callable[[str], Awaitable[None]]


class Consumer:
    """Runs streaq's consumer for one worker process: :meth:`consume` until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._streaq: _Streaq | None = None

    async def consume(self, execute: Execute) -> None:
        """Execute queued runs with ``execute(run_id)`` until :meth:`stop` is called.

        streaq loads its functions and creates its consumer group only when it starts,
        so a Redis restart makes its next call fail and its consumer end: a fresh one is
        started, with a bounded backoff. Runs in progress are shielded by streaq and
        finish first; runs that were queued are brought back by the worker's sweeper.
        """
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

    def _new_streaq(self, execute: Execute) -> _Streaq:
        settings = self._settings
        queue = _Streaq(
            settings.queue_redis_url or settings.redis_url,
            # RUNSTREAM_QUEUE_REDIS_URL is a standalone Redis, even beside a cluster.
            cluster=settings.redis_cluster and not settings.queue_redis_url,
            instance=settings.instance,
            queue_name=settings.queue_name,
            concurrency=settings.worker_concurrency,
        )
        queue.register_executor(execute)
        return queue


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
        instance: str,
        queue_name: str,
        concurrency: int,
    ) -> None:
        name = client_name("worker", instance, "queue")
        limit = CONSUMER_CONNECTIONS
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


def _dumps(data: Any) -> bytes:
    # A failed task's result is an exception: keep its text rather than fail to store it.
    return orjson.dumps(data, default=repr)
