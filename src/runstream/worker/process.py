"""A worker process: the queue's consumer, the executor and the sweeper, as helper tasks.

Shutdown (docs/settings.md): when ``shutdown`` is set the worker stops taking runs,
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

from runstream.concurrency import helper_task
from runstream.config import Settings
from runstream.errors import RunstreamError
from runstream.metrics import SWEEPS
from runstream.models import RunStatus, utcnow
from runstream.observability import PROCESS, RunGauges
from runstream.resources import Resources, open_resources
from runstream.service import SHUTDOWN_ERROR, RunService
from runstream.worker.batching import open_appender
from runstream.worker.executor import Executor
from runstream.worker.observe import serving_observation
from runstream.worker.starts import open_starts

log = structlog.get_logger(__name__)


async def run_worker(
    settings: Settings,
    shutdown: asyncio.Event,
    ready: Callable[[Resources, Executor], None] | None = None,
    *,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Execute runs until ``shutdown`` is set, then wind down within the grace periods.

    ``ready`` is called once the worker's resources are open (operators' tools and tests).
    With ``RUNSTREAM_METRICS_PORT`` it serves ``/metrics`` and ``/healthz`` meanwhile.
    """
    async with contextlib.AsyncExitStack() as stack:
        resources = await stack.enter_async_context(open_resources(settings, role="worker"))
        appender = await stack.enter_async_context(open_appender(resources))
        starts = await stack.enter_async_context(open_starts(RunService(resources)))
        executor = Executor(resources, appender, starts)
        gauges = RunGauges(lambda: executor.active_runs, executor.oldest_run_age_s)
        stack.enter_context(PROCESS.watching(resources, runs=gauges))
        if settings.metrics_port is not None:
            serving = serving_observation(resources, metrics_host, settings.metrics_port)
            await stack.enter_async_context(serving)
        await _work(settings, shutdown, resources, executor, ready)


async def _work(
    settings: Settings,
    shutdown: asyncio.Event,
    resources: Resources,
    executor: Executor,
    ready: Callable[[Resources, Executor], None] | None,
) -> None:
    """Consume the queue and sweep until ``shutdown``; then wind down (the module doc)."""
    if ready is not None:
        ready(resources, executor)
    queue = resources.queue
    log.info("worker started", instance=settings.instance)
    sweeper = Sweeper(resources, executor)
    async with (
        helper_task(sweeper.run(), name="runstream-sweeper"),
        helper_task(queue.consume(executor.execute), name="runstream-consumer") as consuming,
    ):
        try:
            async with helper_task(shutdown.wait(), name="runstream-shutdown") as waiter:
                await asyncio.wait([consuming, waiter], return_when=asyncio.FIRST_COMPLETED)
            queue.stop()
            log.info("worker shutting down", running=executor.active_runs)
            done, _ = await asyncio.wait([consuming], timeout=settings.shutdown_grace_s)
            if not done:
                executor.stop_all(SHUTDOWN_ERROR)
            await asyncio.wait([consuming])
        except asyncio.CancelledError:
            # Cancelled from outside: streaq shields running runs, so stop them now
            # or the cancellation would wait for them to end by themselves.
            queue.stop()
            executor.stop_all(SHUTDOWN_ERROR)
            raise
    log.info("worker stopped", instance=settings.instance)


class Sweeper:
    """Finds runs a dead worker left ``running`` and runs whose queue entry was lost.

    A running run is orphaned when its lock has been missing for a third of
    ``WORKER_LOST_S``: a live owner renews its lock six times per ``WORKER_LOST_S`` and
    re-creates it if Redis lost it, so only a dead one stays missing that long. Queued
    runs older than ``WORKER_LOST_S`` are enqueued again; the queue ignores a run whose
    task still exists, so this only brings back what a Redis restart lost.
    """

    def __init__(self, resources: Resources, executor: Executor) -> None:
        self._res = resources
        self._executor = executor
        self._lost_s = resources.settings.worker_lost_s
        self._missing_since: dict[str, float] = {}

    async def run(self) -> None:
        rounds = SWEEPS.labels(self._res.role, self._res.settings.instance)
        while True:
            try:
                await self.sweep()
            except RunstreamError as exc:  # Redis or the database away: next round
                log.warning("sweep failed", error=str(exc))
            except Exception:  # a bug must not stop the sweeping of every later round
                log.exception("sweep failed unexpectedly")
            rounds.inc()
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
        for run in queued:
            await self._res.queue.enqueue(run.id)
