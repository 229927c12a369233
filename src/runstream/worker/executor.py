"""Executing one run: lock, mark running, drive the agent, write every event, finish.

The run's single writer is the worker holding its lock; it alone counts ``seq``. Every
change to the run itself (start, events, the ending and its order) goes through
:class:`~runstream.service.RunService`; this module owns what happens around the
agent: the lock and its renewal, the stop signal and the forced stop after the grace.
Ending is shielded and bounded (``finish_shielded``), so a cancelled worker still
finishes what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from runstream.agents.context import RunContext
from runstream.concurrency import finish_shielded, helper_task
from runstream.errors import AgentError, BackendUnavailable, LockLost, RunstreamError, describe
from runstream.models import Run, RunStatus, build_event, status_event, utcnow
from runstream.resources import Resources
from runstream.service import SHUTDOWN_ERROR, EventWriter, Outcome, RunService
from runstream.streams import keys
from runstream.streams.eventlog import Fence
from runstream.streams.pubsub import RESYNC, Message, Subscription
from runstream.worker.batching import Appender, EventBatcher, batching
from runstream.worker.limits import RunBudget
from runstream.worker.starts import Starts

log = structlog.get_logger(__name__)

FINISH_TIMEOUT_S = 30.0
"""The most a shielded ending may take before it is abandoned to the sweeper."""
RELEASE_TIMEOUT_S = 5.0


@dataclass(slots=True)
class ActiveRun:
    """A run this worker is executing, and why it is being stopped, if it is."""

    ctx: RunContext
    stop_reason: str | None = None
    stopping: bool = field(default=False)
    started: float = field(default_factory=time.monotonic)
    over_budget: str | None = None
    """Set when the watcher had to end a run that outlived RUNSTREAM_MAX_RUN_S."""

    def request_stop(self, reason: str | None) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.ctx.request_stop()


class Executor:
    """Runs agents for the queue's tasks and ends them, whatever happens."""

    def __init__(self, resources: Resources, appender: Appender, starts: Starts) -> None:
        self._res = resources
        self._appender = appender
        self._starts = starts
        self._runs = RunService(resources)
        self._settings = resources.settings
        self._owner = resources.settings.instance
        self._active: dict[str, ActiveRun] = {}

    @property
    def active_runs(self) -> int:
        return len(self._active)

    def oldest_run_age_s(self) -> float:
        """Seconds the longest-running run of this worker has been going (0: none)."""
        if not self._active:
            return 0.0
        return time.monotonic() - min(active.started for active in self._active.values())

    def stop_all(self, reason: str) -> None:
        """Ask every running agent to stop (they are cancelled after the stop grace)."""
        for active in self._active.values():
            active.request_stop(reason)

    @property
    def _lock_ttl_s(self) -> float:
        return self._settings.worker_lost_s / 2

    # -- entry point ------------------------------------------------------------------

    async def execute(self, run_id: str) -> None:
        """Execute ``run_id`` once; a delivery of a run that is not queued is skipped
        (or, when it is running and its worker is gone, the run is ended)."""
        with structlog.contextvars.bound_contextvars(run_id=run_id, instance=self._owner):
            async with self._locked(run_id) as fence:
                if fence is not None:  # else another worker has it
                    await self._execute_locked(run_id, fence)

    async def end_orphan(self, run: Run) -> bool:
        """End a ``running`` run whose worker is gone; False while its lock is held."""
        async with self._locked(run.id) as fence:
            if fence is not None:
                await self._runs.end_orphan(run, fence)
            return fence is not None

    async def _execute_locked(self, run_id: str, fence: Fence) -> None:
        # Listen for control messages before looking at the stop flag, so a stop that
        # comes in between is heard one way or the other.
        # A SubscribeError leaves the run queued; the queue delivers it again.
        async with self._res.hub.subscribe(keys.run_control(run_id)) as control:
            # Marking it running is also how the run is read: one transaction, where a
            # read first and then the write took two for every run; and one for every
            # run starting meanwhile (``starts.py``).
            started = await self._starts.start(run_id)
            if started is None:
                await self._not_started(run_id, fence)
                return
            keeper = self._keep_lock(run_id, started.principal, fence.token)
            async with helper_task(keeper, name="runstream-run-lock"):
                with contextlib.suppress(BackendUnavailable):  # renewed with the lock anyway
                    await self._res.quotas.renew_run(
                        started.principal, run_id, self._runs.running_lease_s, starting=True
                    )
                await self._run_started(started, control, fence)

    async def _not_started(self, run_id: str, fence: Fence) -> None:
        """A delivery of a run that was not queued: gone, ended (stopped while queued,
        its stream holds its terminal event already), or running with its worker gone,
        since this worker holds its lock now; that one is ended here."""
        run = await self._runs.load(run_id)
        if run is not None and run.status is RunStatus.RUNNING:
            await self._runs.end_orphan(run, fence)

    async def _run_started(self, run: Run, control: Subscription, fence: Fence) -> None:
        writer = await self._runs.writer(run, fence)
        active = ActiveRun(RunContext(run.id, run.thread_id, dict(run.metadata)))
        self._active[run.id] = active
        outcome = Outcome(RunStatus.FAILED, "internal error")
        try:
            await writer.write(status_event(RunStatus.RUNNING, writer.next_seq, utcnow()))
            if await self._runs.stop_requested(run.id):
                active.request_stop(None)
            outcome = await self._drive(run, active, writer, control)
        except asyncio.CancelledError:
            outcome = Outcome(RunStatus.STOPPED, SHUTDOWN_ERROR)
            raise
        except BackendUnavailable as exc:
            outcome = backend_failed(exc)
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
        # The watcher is given the agent's task; the batcher's exit appends what the
        # agent queued last, before the run's ending is written.
        async with (
            batching(self._appender, writer) as batcher,
            helper_task(self._consume(events, active, batcher)) as agent_task,
            helper_task(self._watch_stop(run.id, active, control, agent_task)),
        ):
            await asyncio.wait([agent_task])
        if agent_task.cancelled():  # it ignored the stop and was cancelled after the grace
            if active.over_budget is not None:
                return Outcome(RunStatus.FAILED, active.over_budget)
            return Outcome(RunStatus.STOPPED, active.stop_reason)
        outcome: Outcome = agent_task.result()
        return outcome

    async def _consume(
        self, events: AsyncIterator[dict[str, Any]], active: ActiveRun, batcher: EventBatcher
    ) -> Outcome:
        limit = self._settings.max_event_bytes
        budget = RunBudget(self._settings)
        deadline = asyncio.timeout(self._settings.max_run_s)
        try:
            async with deadline, _closing(events):
                async for raw in events:
                    event = build_event(raw, batcher.next_seq, utcnow(), limit)
                    budget.charge(event)
                    await batcher.put(event)
        except TimeoutError:
            if not deadline.expired():
                return self._agent_failed(TimeoutError())  # the agent's own timeout
            return Outcome(RunStatus.FAILED, budget.time_exceeded())
        except (AgentError, LockLost) as exc:
            return Outcome(RunStatus.FAILED, str(exc))
        except BackendUnavailable as exc:
            return backend_failed(exc)
        except Exception as exc:  # the agent's own failure ends its run, not the worker
            return self._agent_failed(exc)
        if active.stopping:
            return Outcome(RunStatus.STOPPED, active.stop_reason)
        return Outcome(RunStatus.COMPLETED)

    def _agent_failed(self, exc: BaseException) -> Outcome:
        """The outcome of an agent that raised: its full text is logged; clients see its
        type only, unless RUNSTREAM_EXPOSE_AGENT_ERRORS (it may hold a secret)."""
        text = describe(exc)
        log.warning("agent failed", error=text)
        if self._settings.expose_agent_errors:
            return Outcome(RunStatus.FAILED, text)
        return Outcome(RunStatus.FAILED, f"{type(exc).__name__} (details in the worker log)")

    async def _watch_stop(
        self,
        run_id: str,
        active: ActiveRun,
        control: Subscription,
        agent_task: asyncio.Task[Outcome],
    ) -> None:
        """Turn a stop request into the agent's stop signal, then force it after the grace.

        Also the backstop of RUNSTREAM_MAX_RUN_S: an agent that swallowed the budget's
        cancellation is stopped and cancelled the same way once the budget and a grace
        have passed."""
        checks = 0
        message: Message | None
        overdue_at = active.started + self._settings.max_run_s + self._settings.stop_grace_s
        while not active.stopping:
            if time.monotonic() > overdue_at:
                active.over_budget = RunBudget(self._settings).time_exceeded()
                active.request_stop(active.over_budget)
                break
            try:
                async with asyncio.timeout(0.5):
                    message = await control.get()
            except TimeoutError:
                checks += 1
                # The flag is the durable truth; re-read it now and then and after a resync.
                message = RESYNC if checks % 4 == 0 else None
            if message is RESYNC:
                with contextlib.suppress(BackendUnavailable):
                    if await self._runs.stop_requested(run_id):
                        active.request_stop(None)
            elif message is not None:
                active.request_stop(None)
        grace = self._settings.stop_grace_s
        done, _ = await asyncio.wait([agent_task], timeout=grace)
        while not done:
            # Again and again: an agent may swallow one CancelledError, not every one.
            log.warning("agent ignored the stop; cancelling it", grace_s=grace)
            agent_task.cancel()
            done, _ = await asyncio.wait([agent_task], timeout=max(grace, 1.0))

    # -- ending -----------------------------------------------------------------------

    async def _finish_shielded(self, run_id: str, writer: EventWriter, outcome: Outcome) -> None:
        try:
            await finish_shielded(
                self._runs.finish(run_id, writer, outcome), within_s=FINISH_TIMEOUT_S
            )
        except (RunstreamError, TimeoutError) as exc:
            # The record stays running: the sweeper ends it "worker lost" once the lock
            # is gone.
            log.error("could not finish the run", status=outcome.status.value, error=str(exc))

    # -- the lock ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, run_id: str) -> AsyncIterator[Fence | None]:
        """Take the run's lock for the block; yields its fence, or None, holding nothing,
        when another worker has it. A run being executed renews it (``_keep_lock``).

        The lock's value is this worker's instance plus a token of this taking, so the
        append script can refuse a writer whose lock someone else took since (fencing).
        """
        token = f"{self._owner}:{secrets.token_hex(6)}"
        if not await self._res.control.acquire(run_id, token, self._lock_ttl_s):
            yield None
            return
        try:
            yield Fence(token, int(self._lock_ttl_s * 1000))
        finally:
            with contextlib.suppress(RunstreamError, TimeoutError):  # the TTL ends it anyway
                await finish_shielded(
                    self._res.control.release(run_id, token), within_s=RELEASE_TIMEOUT_S
                )

    async def _keep_lock(self, run_id: str, principal: str, token: str) -> None:
        """Renew the run's lock, and with it the run's lease on its principal's quota."""
        interval = self._settings.worker_lost_s / 6
        lease_s = self._runs.running_lease_s
        while True:
            await asyncio.sleep(interval)
            try:
                kept = await self._res.control.renew(run_id, token, self._lock_ttl_s)
                await self._res.quotas.renew_run(principal, run_id, lease_s)
            except BackendUnavailable as exc:
                log.warning("could not renew the run lock", error=str(exc))
                continue
            if not kept:  # its next append is refused (LockLost) and the run ends here
                log.error("run lock taken by another worker")


def backend_failed(exc: BackendUnavailable) -> Outcome:
    """A run that failed because a backend stayed away: clients are told which one, not
    its address (the message is logged)."""
    log.error("run failed: a backend stayed unavailable", error=str(exc))
    return Outcome(RunStatus.FAILED, f"{exc.dependency} stayed unavailable")


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[None]:
    """Close the agent's iterator on every exit, so its own ``finally`` runs now (an
    agent may be any async iterator; only generators are sure to have ``aclose``)."""
    try:
        yield
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
