"""A worker process: the queue, the executor and the sweeper, under one task group.

Shutdown (DESIGN.md section 6): when ``shutdown`` is set the worker stops taking runs,
lets running ones go on for up to ``SHUTDOWN_GRACE_S``, then stops them (``stopped``,
"worker shut down"; the agent is cancelled after ``STOP_GRACE_S`` if it ignores that),
and returns with every connection released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from runstream.concurrency import cancel_and_wait
from runstream.config import Settings
from runstream.models import RunStatus, utcnow
from runstream.resources import Resources, open_resources
from runstream.worker.executor import SHUTDOWN_ERROR, Executor
from runstream.worker.queue import RunQueue, enqueue_run

log = structlog.get_logger(__name__)


async def run_worker(
    settings: Settings,
    shutdown: asyncio.Event,
    ready: Callable[[Resources, Executor], None] | None = None,
) -> None:
    """Execute runs until ``shutdown`` is set, then wind down within the grace periods.

    ``ready`` is called once the worker's resources are open (operators' tools and tests).
    """
    async with open_resources(settings, role="worker") as resources:
        executor = Executor(resources)
        if ready is not None:
            ready(resources, executor)
        consumer = Consumer(settings, executor)
        log.info("worker started", instance=settings.instance)
        async with asyncio.TaskGroup() as tg:
            consuming = tg.create_task(consumer.run())
            sweeper = tg.create_task(Sweeper(resources, executor, consumer).run())
            waiter = tg.create_task(shutdown.wait())
            try:
                await asyncio.wait([waiter, consuming], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                consumer.stop()
                log.info("worker shutting down", running=executor.active_runs)
                done, _ = await asyncio.wait([consuming], timeout=settings.shutdown_grace_s)
                if not done:
                    executor.stop_all(SHUTDOWN_ERROR)
                await asyncio.wait([consuming])
            except asyncio.CancelledError:
                # Cancelled from outside: streaq shields running runs, so stop them now
                # or the cancellation would wait for them to end by themselves.
                consumer.stop()
                executor.stop_all(SHUTDOWN_ERROR)
                raise
            finally:
                await cancel_and_wait(sweeper)
        log.info("worker stopped", instance=settings.instance)


class Consumer:
    """Runs the queue's consumer, and a fresh one whenever a Redis failure ends it.

    streaq loads its functions and creates its consumer group only when it starts, so a
    Redis restart makes its next call fail and its run end. Runs in progress are shielded
    by streaq and finish first; runs that were queued are brought back by the sweeper.
    """

    def __init__(self, settings: Settings, executor: Executor) -> None:
        self._settings = settings
        self._executor = executor
        self._stopping = asyncio.Event()
        self.queue: RunQueue | None = None

    def stop(self) -> None:
        """Take no more runs; ``run`` returns once the running ones are done."""
        self._stopping.set()
        if self.queue is not None:
            self.queue.stop()

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self.queue = self._new_queue()
            try:
                await self.queue.run_async()
                return
            except Exception as exc:  # a Redis restart or outage: start again
                if self._stopping.is_set():
                    return
                log.error("queue consumer ended by an error; restarting", error=_summary(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, 5.0)

    def _new_queue(self) -> RunQueue:
        queue = RunQueue(
            self._settings.redis_url,
            role="worker",
            instance=self._settings.instance,
            queue_name=self._settings.queue_name,
            concurrency=self._settings.worker_concurrency,
        )
        queue.register_executor(self._executor.execute)
        return queue


def _summary(exc: BaseException) -> str:
    """The innermost message of a (possibly grouped) exception."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class Sweeper:
    """Finds runs a dead worker left ``running`` and runs whose queue entry was lost.

    A running run is orphaned when its lock has been missing for a third of
    ``WORKER_LOST_S``: a live owner renews its lock six times per ``WORKER_LOST_S`` and
    re-creates it if Redis lost it, so only a dead one stays missing that long. Queued
    runs older than ``WORKER_LOST_S`` are enqueued again; the queue ignores a run whose
    task still exists, so this only brings back what a Redis restart lost.
    """

    def __init__(self, resources: Resources, executor: Executor, consumer: Consumer) -> None:
        self._res = resources
        self._executor = executor
        self._consumer = consumer
        self._lost_s = resources.settings.worker_lost_s
        self._missing_since: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # Redis or the database away: try again next round
                log.warning("sweep failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self._lost_s / 6)

    async def sweep(self) -> None:
        """One pass over running and old queued runs."""
        running = await self._res.store.runs_with_status(RunStatus.RUNNING)
        now = time.monotonic()
        seen = set()
        for run in running:
            seen.add(run.id)
            if await self._res.control.lock_holder(run.id) is not None:
                self._missing_since.pop(run.id, None)
                continue
            since = self._missing_since.setdefault(run.id, now)
            if now - since >= self._lost_s / 3 and await self._executor.end_orphan(run):
                self._missing_since.pop(run.id, None)
        for run_id in set(self._missing_since) - seen:
            del self._missing_since[run_id]
        queued = await self._res.store.runs_with_status(
            RunStatus.QUEUED, created_before=utcnow() - timedelta(seconds=self._lost_s)
        )
        queue = self._consumer.queue
        if queue is None:
            return
        for run in queued:
            await enqueue_run(queue, run.id)
