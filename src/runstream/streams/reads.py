"""Reads that every follower of a process shares: one read per run and range, in turn.

Thousands of readers of a few hundred runs must not cost thousands of reads, nor fail
because a pool is busy (issue: the seed's "no connection available" in a new place).
:class:`SharedReads` gives followers three guarantees:

- **Single flight.** Concurrent requests for the same thing (a run's log after a ``seq``,
  a run's record, an archive page) share one read: a burst of opens or a resync of
  every subscriber of a run costs O(runs), not O(readers).
- **Backpressure, not errors.** Reads go through gates smaller than the pools, so a
  follower waits its turn for as long as its client is there instead of timing out on
  the pool; only a real outage (BackendUnavailable) reaches it.
- **Facts that never change are cached.** A run's owner never changes, a final record
  never changes; silent runs are checked at most once per ``fresh_s`` whatever the number
  of readers polling them.

The reads run as tasks of the object's own task group (it is an async context manager
entered by ``open_resources``), so a follower that leaves does not cancel a read others
wait for, and no read outlives the process's resources.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from runstream.concurrency import finish_shielded
from runstream.models import Event, Run, is_last_page
from runstream.streams.eventlog import EventLog
from runstream.streams.frames import Frame, to_frame

CLOSE_WITHIN_S = 5.0
"""The most closing waits for the reads in flight (each is bounded by its pool's timeouts)."""

CHECKS_KEPT = 10_000
"""Runs whose last log look is remembered before old looks are pruned."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

LoadRun = Callable[[str], Awaitable[Run | None]]
ReadArchive = Callable[[str, int, int], Awaitable[list[Event]]]

OWNERS_CACHED = 100_000
"""Owners and final records kept (a few hundred bytes each: tens of MiB at most)."""


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[V]):
    value: V | None = None
    error: BaseException | None = None

    def unwrap(self) -> V:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class SingleFlight(Generic[K, V]):
    """Runs one read per key at a time (as a task ``spawn`` starts); callers of a key in
    flight share it."""

    def __init__(self, spawn: Spawn, gate: asyncio.Semaphore) -> None:
        self._spawn = spawn
        self._gate = gate
        self._flights: dict[K, asyncio.Task[_Outcome[V]]] = {}
        self.reads = 0  # reads actually made, for tests and metrics

    async def do(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The result of ``read()``, or of the read of ``key`` already in flight."""
        task = self._flights.get(key)
        if task is None:
            task = self._spawn(self._fly(key, read))
            self._flights[key] = task
        # Shielded: a caller that leaves (its client went) does not cancel the others' read.
        outcome = await asyncio.shield(task)
        return outcome.unwrap()

    async def _fly(self, key: K, read: Callable[[], Awaitable[V]]) -> _Outcome[V]:
        try:
            async with self._gate:  # waits its turn: the pool behind it is never overdrawn
                self.reads += 1
                return _Outcome(value=await read())
        except Exception as exc:  # handed to every caller; the task group must not fail
            return _Outcome(error=exc)
        finally:
            self._flights.pop(key, None)


class SharedReads:
    """The log, record and archive reads of every follower in the process.

    An async context manager: its reads run as tasks of its own task group, cancelled
    and awaited on exit. ``log_gate`` bounds concurrent Redis reads (shared with the
    stream leases: ``resources.redis_gate``), ``db_gate`` concurrent database reads;
    both must be below the pools' sizes.
    """

    def __init__(
        self,
        *,
        log: EventLog,
        load_run: LoadRun,
        read_archive: ReadArchive,
        log_gate: asyncio.Semaphore,
        db_gate: int,
        fresh_s: float,
    ) -> None:
        self._log = log
        self._load_run = load_run
        self._read_archive = read_archive
        self._fresh_s = fresh_s
        redis_gate, database_gate = log_gate, asyncio.Semaphore(db_gate)
        self._group: asyncio.TaskGroup | None = None
        spawn = self._spawn
        self._pages: SingleFlight[tuple[str, int, int], list[Frame]] = SingleFlight(
            spawn, redis_gate
        )
        self._records: SingleFlight[str, Run | None] = SingleFlight(spawn, database_gate)
        self._archive: SingleFlight[tuple[str, int, int], list[Frame]] = SingleFlight(
            spawn, database_gate
        )
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._final: OrderedDict[str, Run] = OrderedDict()
        # run id -> (monotonic time of the last log read, highest seq that read saw)
        self._checked: dict[str, tuple[float, int]] = {}

    async def __aenter__(self) -> SharedReads:
        self._group = await asyncio.TaskGroup().__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        assert group is not None
        flying = [
            task
            for flights in (self._pages, self._records, self._archive)
            for task in flights._flights.values()
        ]
        # Reads in flight finish first, within a deadline: a read cancelled in the middle
        # of its connection's handshake leaves redis-py's socket open (a ResourceWarning
        # when it is collected) and aiosqlite's connection to close in a thread of its own.
        try:
            if flying:
                await finish_shielded(asyncio.wait(flying), within_s=CLOSE_WITHIN_S)
        except TimeoutError:
            pass  # those still flying are cancelled below
        finally:
            for task in flying:
                task.cancel()
            await group.__aexit__(None, None, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._group is None:
            coro.close()
            raise RuntimeError("SharedReads used outside its `async with` block")
        return self._group.create_task(coro)

    @property
    def database_reads(self) -> int:
        """Record and archive reads made so far."""
        return self._records.reads + self._archive.reads

    async def log_page(
        self, run_id: str, after: int, limit: int, *, poll: bool = False
    ) -> list[Frame]:
        """Up to ``limit`` frames of the run's Redis log with ``seq > after``.

        ``poll`` marks a look taken only because the run was silent for a while: it is
        answered without a read when the log's end was read less than ``fresh_s`` ago.
        Any other read (a skipped ``seq``, a resync, a new reader) goes to Redis.
        """
        checked = self._checked.get(run_id) if poll else None
        if checked is not None and checked[1] <= after and self._fresh(checked[0]):
            return []
        key = (run_id, after, limit)
        return await self._pages.do(key, lambda: self._read_log(run_id, after, limit))

    def _fresh(self, at: float) -> bool:
        return time.monotonic() - at < self._fresh_s

    async def _read_log(self, run_id: str, after: int, limit: int) -> list[Frame]:
        started = time.monotonic()
        events = await self._log.read(run_id, after, limit)
        frames = [to_frame(event) for event in events]
        if is_last_page(events, limit):  # this read reached the end the log had at ``started``
            previous = self._checked.get(run_id)
            if previous is None or previous[0] <= started:
                self._checked[run_id] = (started, frames[-1].seq if frames else after)
                if len(self._checked) > CHECKS_KEPT:
                    self._prune_checks(started)
        return frames

    def _prune_checks(self, now: float) -> None:
        """Forget looks too old to answer a poll (runs nobody follows any more)."""
        old = [k for k, (at, _) in self._checked.items() if now - at >= self._fresh_s]
        for run_id in old:
            del self._checked[run_id]

    async def record(self, run_id: str) -> Run | None:
        """The run's record: cached once final, read at most once per ``fresh_s`` before."""
        final = self._final.get(run_id)
        if final is not None:
            return final
        run = await self._records.do(run_id, lambda: self._load_run(run_id))
        if run is not None:
            self._remember(self._owners, run_id, run.principal)
            if run.status.is_final:
                self._remember(self._final, run_id, run)
        return run

    async def owner(self, run_id: str) -> str | None:
        """Who the run belongs to (None when it does not exist); cached, since it never changes."""
        owner = self._owners.get(run_id)
        if owner is not None:
            return owner
        run = await self.record(run_id)
        return None if run is None else run.principal

    async def archive_page(self, run_id: str, after: int, limit: int) -> list[Frame]:
        """Up to ``limit`` archived frames of a finished run with ``seq > after``."""

        async def read() -> list[Frame]:
            return [to_frame(e) for e in await self._read_archive(run_id, after, limit)]

        return await self._archive.do((run_id, after, limit), read)

    @staticmethod
    def _remember(cache: OrderedDict[str, V], key: str, value: V) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > OWNERS_CACHED:
            cache.popitem(last=False)
