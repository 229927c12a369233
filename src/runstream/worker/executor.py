"""Executing one run: lock, mark running, drive the agent, write every event, finish.

The run's single writer is the worker holding its lock; it alone counts ``seq``. The end
of every run follows the same order (DESIGN.md "the record leads the stream"): the final
status goes to the database first, then the terminal status event to the log, then the
events are archived. Ending happens in a shielded scope, so a cancelled worker still
finishes what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog

from runstream.agents.context import RunContext
from runstream.concurrency import cancel_and_wait, collapse_excgroups
from runstream.errors import AgentError, BackendUnavailable, RunstreamError
from runstream.metrics import EVENTS_APPENDED, RUN_OUTCOMES
from runstream.models import Event, Run, RunStatus, build_event, status_event, utcnow
from runstream.resources import Resources
from runstream.streams import keys
from runstream.streams.connection import redis_errors
from runstream.streams.pubsub import RESYNC, Message, Subscription

log = structlog.get_logger(__name__)
T = TypeVar("T")

SHUTDOWN_ERROR = "worker shut down"
LOST_ERROR = "worker lost"
FINISH_TIMEOUT_S = 30.0  # the most a shielded ending may take before it is abandoned
APPEND_RETRY_S = 30.0  # how long an append waits for Redis to come back


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended."""

    status: RunStatus
    error: str | None = None


@dataclass(slots=True)
class ActiveRun:
    """A run this worker is executing, and why it is being stopped, if it is."""

    ctx: RunContext
    stop_reason: str | None = None
    stopping: bool = field(default=False)

    def request_stop(self, reason: str | None) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.ctx.request_stop()


class EventWriter:
    """Appends a run's events with contiguous ``seq``, retrying while Redis is away."""

    def __init__(self, resources: Resources, run_id: str, first_seq: int) -> None:
        self._res = resources
        self._run_id = run_id
        self.next_seq = first_seq

    async def write(self, event: Event) -> None:
        assert event.seq == self.next_seq, "seq must stay contiguous"
        deadline = anyio.current_time() + APPEND_RETRY_S
        delay = 0.05
        while True:
            try:
                with redis_errors(role=self._res.role, instance=self._res.settings.instance):
                    await self._res.log.append(self._run_id, [event])
                EVENTS_APPENDED.labels(self._res.role, self._res.settings.instance).inc()
                break
            except BackendUnavailable:
                if anyio.current_time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self.next_seq += 1


class Executor:
    """Runs agents for the queue's tasks and ends them, whatever happens."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources
        self._settings = resources.settings
        self._owner = resources.settings.instance
        self._active: dict[str, ActiveRun] = {}

    @property
    def active_runs(self) -> int:
        return len(self._active)

    def stop_all(self, reason: str) -> None:
        """Ask every running agent to stop (they are cancelled after the stop grace)."""
        for active in self._active.values():
            active.request_stop(reason)

    @property
    def _lock_ttl_s(self) -> float:
        return self._settings.worker_lost_s / 2

    # -- entry point ------------------------------------------------------------------

    async def execute(self, run_id: str) -> None:
        """Execute ``run_id`` once; a delivery of a run that is not queued is skipped."""
        with structlog.contextvars.bound_contextvars(run_id=run_id, instance=self._owner):
            run = await self._res.store.get_run(run_id)
            if run is None or run.status.is_final:
                return
            if run.status is RunStatus.RUNNING:
                await self.end_orphan(run)
                return
            with redis_errors(role=self._res.role, instance=self._owner):
                taken = await self._res.control.acquire(run_id, self._owner, self._lock_ttl_s)
            if not taken:
                return  # another worker has it
            try:
                async with self._holding_lock(run_id):
                    await self._execute_locked(run)
            finally:
                await self._release(run_id)

    async def _execute_locked(self, run: Run) -> None:
        # Listen for control messages before looking at the stop flag, so a stop that
        # comes in between is heard one way or the other.
        # A SubscribeError leaves the run queued; the queue delivers it again.
        async with self._res.hub.subscribe(keys.run_control(run.id)) as control:
            started = await self._res.store.mark_running(run.id, utcnow())
            if started is None:
                return  # stopped while queued: its stream already holds its terminal event
            await self._run_started(started, control)

    async def _run_started(self, run: Run, control: Subscription) -> None:
        last = await self._res.log.last_seq(run.id)
        writer = EventWriter(self._res, run.id, first_seq=(last or run.last_seq) + 1)
        active = ActiveRun(RunContext(run.id, run.thread_id, dict(run.metadata)))
        self._active[run.id] = active
        outcome = Outcome(RunStatus.FAILED, "internal error")
        try:
            await writer.write(status_event(RunStatus.RUNNING, writer.next_seq, utcnow()))
            with redis_errors(role=self._res.role, instance=self._owner):
                if await self._res.control.stop_requested(run.id):
                    active.request_stop(None)
            outcome = await self._drive(run, active, writer, control)
        except asyncio.CancelledError:
            outcome = Outcome(RunStatus.STOPPED, SHUTDOWN_ERROR)
            raise
        except RunstreamError as exc:
            outcome = Outcome(RunStatus.FAILED, str(exc))
        finally:
            del self._active[run.id]
            await self._finish_shielded(run.id, writer, outcome)

    # -- driving the agent ------------------------------------------------------------

    async def _drive(
        self, run: Run, active: ActiveRun, writer: EventWriter, control: Subscription
    ) -> Outcome:
        try:
            agent = self._res.agents.get(run.agent)
            agent_input = self._res.agents.validate_input(run.agent, run.input)
        except AgentError as exc:
            return Outcome(RunStatus.FAILED, str(exc))
        events = agent(active.ctx, agent_input)
        async with asyncio.TaskGroup() as tg:
            agent_task = tg.create_task(self._consume(events, active, writer))
            watcher = tg.create_task(self._watch_stop(run.id, active, control, agent_task))
            try:
                await asyncio.wait([agent_task])
            finally:
                await cancel_and_wait(watcher)
        if agent_task.cancelled():  # it ignored the stop and was cancelled after the grace
            return Outcome(RunStatus.STOPPED, active.stop_reason)
        return agent_task.result()

    async def _consume(
        self, events: AsyncIterator[dict[str, Any]], active: ActiveRun, writer: EventWriter
    ) -> Outcome:
        limit = self._settings.max_event_bytes
        try:
            async with _closing(events):
                async for raw in events:
                    await writer.write(build_event(raw, writer.next_seq, utcnow(), limit))
        except (AgentError, BackendUnavailable) as exc:
            return Outcome(RunStatus.FAILED, str(exc))
        except Exception as exc:  # the agent's own failure ends its run, not the worker
            return Outcome(RunStatus.FAILED, _describe(exc))
        if active.stopping:
            return Outcome(RunStatus.STOPPED, active.stop_reason)
        return Outcome(RunStatus.COMPLETED)

    async def _watch_stop(
        self,
        run_id: str,
        active: ActiveRun,
        control: Subscription,
        agent_task: asyncio.Task[Outcome],
    ) -> None:
        """Turn a stop request into the agent's stop signal, then force it after the grace."""
        checks = 0
        message: Message | None
        while not active.stopping:
            try:
                async with asyncio.timeout(0.5):
                    message = await control.get()
            except TimeoutError:
                checks += 1
                # The flag is the durable truth; re-read it now and then and after a resync.
                message = RESYNC if checks % 4 == 0 else None
            if message is RESYNC:
                with (
                    contextlib.suppress(BackendUnavailable),
                    redis_errors(role=self._res.role, instance=self._owner),
                ):
                    if await self._res.control.stop_requested(run_id):
                        active.request_stop(None)
            elif message is not None:
                active.request_stop(None)
        done, _ = await asyncio.wait([agent_task], timeout=self._settings.stop_grace_s)
        if not done:
            log.warning(
                "agent ignored the stop; cancelling it", grace_s=self._settings.stop_grace_s
            )
            agent_task.cancel()

    # -- ending -----------------------------------------------------------------------

    async def _finish_shielded(self, run_id: str, writer: EventWriter, outcome: Outcome) -> None:
        # Shielded from the anyio scopes streaq runs tasks in, and bounded in time.
        with anyio.CancelScope(shield=True), anyio.move_on_after(FINISH_TIMEOUT_S):
            try:
                await self._finish(run_id, writer, outcome, from_statuses=(RunStatus.RUNNING,))
            except Exception:
                log.exception("could not finish the run", status=outcome.status.value)

    async def _finish(
        self,
        run_id: str,
        writer: EventWriter,
        outcome: Outcome,
        *,
        from_statuses: tuple[RunStatus, ...],
    ) -> None:
        completed_at = utcnow()
        final = await _retrying(
            lambda: self._res.store.finish_run(
                run_id,
                status=outcome.status,
                error=outcome.error,
                last_seq=writer.next_seq,
                completed_at=completed_at,
                from_statuses=from_statuses,
            )
        )
        if final is None:
            return  # someone else ended it (a stop while queued, a sweeper)
        log.info("run finished", status=outcome.status.value, error=outcome.error)
        RUN_OUTCOMES.labels(self._res.role, self._owner, outcome.status.value).inc()
        await writer.write(
            status_event(outcome.status, writer.next_seq, completed_at, outcome.error)
        )
        await _retrying(lambda: self._archive(run_id))

    async def _archive(self, run_id: str) -> None:
        after = 0
        while True:
            with redis_errors(role=self._res.role, instance=self._owner):
                batch = await self._res.log.read(run_id, after, 500)
            if not batch:
                return
            await self._res.store.archive_events(run_id, batch)
            after = batch[-1].seq

    async def end_orphan(self, run: Run) -> bool:
        """End a ``running`` run whose worker is gone as failed ("worker lost")."""
        if not await self._res.control.acquire(run.id, self._owner, self._lock_ttl_s):
            return False  # its worker still holds the lock
        try:
            last = await self._res.log.last_seq(run.id)
            writer = EventWriter(self._res, run.id, first_seq=max(last or 0, run.last_seq) + 1)
            log.warning("ending a run whose worker was lost", run_id=run.id)
            await self._finish(
                run.id,
                writer,
                Outcome(RunStatus.FAILED, LOST_ERROR),
                from_statuses=(RunStatus.RUNNING,),
            )
            return True
        finally:
            await self._release(run.id)

    # -- the lock ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _holding_lock(self, run_id: str) -> AsyncIterator[None]:
        with collapse_excgroups():
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(self._keep_lock(run_id))
                try:
                    yield
                finally:
                    await cancel_and_wait(keeper)

    async def _keep_lock(self, run_id: str) -> None:
        interval = self._settings.worker_lost_s / 6
        while True:
            await asyncio.sleep(interval)
            try:
                with redis_errors(role=self._res.role, instance=self._owner):
                    kept = await self._res.control.renew(run_id, self._owner, self._lock_ttl_s)
            except BackendUnavailable as exc:
                log.warning("could not renew the run lock", error=str(exc))
                continue
            if not kept:
                log.error("run lock taken by another worker")

    async def _release(self, run_id: str) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self._res.control.release(run_id, self._owner)


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[None]:
    """Close the agent's generator on every exit, so its own ``finally`` runs now."""
    try:
        yield
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _retrying(call: Callable[[], Awaitable[T]], within_s: float = APPEND_RETRY_S) -> T:
    """Call again while the database or Redis is unavailable, for up to ``within_s``."""
    deadline = anyio.current_time() + within_s
    delay = 0.05
    while True:
        try:
            return await call()
        except BackendUnavailable as exc:
            if anyio.current_time() + delay > deadline:
                raise
            log.warning("backend unavailable; retrying", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
