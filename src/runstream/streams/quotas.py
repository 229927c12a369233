"""Per-principal limits shared by every process: active runs and open streams, in Redis.

Each principal has two sorted sets of leases (``keys.principal_runs``,
``keys.principal_streams``): a member per run or stream, scored with the moment its
lease expires (Redis's own clock, so processes' clocks do not matter). Taking a lease
drops the expired ones, counts the rest and adds one if there is room, in one script:
the count is exact across API processes. Nothing has to be cleaned up after a crash: a
process that dies stops renewing, and its leases expire by themselves.

- A **run** lease is taken when the run is created (long: a queued run may wait), renewed
  by its worker with the run lock while it runs (short: a dead worker frees it soon),
  and dropped when the run ends, whoever ends it.
- A **stream** lease is taken when a stream opens and dropped when it closes; the API
  process renews its open streams' leases in one round trip every third of
  :data:`STREAM_LEASE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from typing import Final

from runstream.concurrency import helper_task
from runstream.errors import BackendUnavailable, QuotaExceeded
from runstream.streams import keys
from runstream.streams.cluster import client_stats
from runstream.streams.connection import (
    CommandClient,
    RedisErrors,
    ScriptCall,
    send_script_calls,
)

STREAM_LEASE_S: Final = 30.0
"""How long a stream lease outlives the API process that stopped renewing it."""

_TAKE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# Renew leases (ARGV[2] 'XX': only those still held, so one released meanwhile is not
# brought back; 'ADD': also those that expired, as for a run its worker starts).
_RENEW = """
local clock = redis.call('TIME')
local expires = clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[1])
for i = 3, #ARGV do
  if ARGV[2] == 'XX' then
    redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], expires, ARGV[i])
  end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class PrincipalQuotas:
    """Leases of active runs and open streams per principal, through the command pool.

    An async context manager: inside it, this process's stream leases are renewed.
    Methods raise QuotaExceeded when over a limit, else only BackendUnavailable.
    """

    def __init__(
        self,
        redis: CommandClient,
        *,
        errors: RedisErrors,
        max_runs: int,
        max_streams: int,
        stream_gate: asyncio.Semaphore | None = None,
        stream_lease_s: float = STREAM_LEASE_S,
    ) -> None:
        self._redis = redis
        self._errors = errors
        # Stream opens come in crowds (every reader of a restarted API at once): they
        # queue here for a connection rather than time out on the pool.
        self._gate = stream_gate or asyncio.Semaphore(max(1, client_stats(redis).max - 2))
        self._stream_lease_s = stream_lease_s
        self._max_runs = max_runs
        self._max_streams = max_streams
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._streams: dict[str, set[str]] = defaultdict(set)  # principal -> stream ids
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> PrincipalQuotas:
        renewer = helper_task(self._renew_streams(), name="runstream-stream-leases")
        await self._stack.enter_async_context(renewer)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    # -- runs -------------------------------------------------------------------------

    async def take_run(self, principal: str, run_id: str, lease_s: float) -> None:
        """Count ``run_id`` as active for ``principal``; QuotaExceeded when at the limit."""
        key = keys.principal_runs(principal)
        if not await self._take_lease(key, run_id, lease_s, self._max_runs):
            raise QuotaExceeded(
                "RUNSTREAM_MAX_ACTIVE_RUNS_PER_PRINCIPAL",
                f"{self._max_runs} runs queued or running already; wait for one to end",
            )

    async def renew_run(
        self, principal: str, run_id: str, lease_s: float, *, starting: bool = False
    ) -> None:
        """Extend a running run's lease (its worker, with the run lock); ``starting``
        counts it again even if its queued lease expired while it waited."""
        mode = "ADD" if starting else "XX"
        with self._errors:
            await self._renew(
                keys=[keys.principal_runs(principal)], args=[int(lease_s * 1000), mode, run_id]
            )

    async def release_run(self, principal: str, run_id: str) -> None:
        """The run ended (or was never created): it no longer counts."""
        with self._errors:
            await self._redis.zrem(keys.principal_runs(principal), run_id)

    # -- streams ----------------------------------------------------------------------

    async def take_stream(self, principal: str) -> str:
        """A lease for one more open stream of ``principal`` (its id, to release it);
        QuotaExceeded when at the limit. Renewed by this process until released."""
        stream_id = uuid.uuid4().hex
        key = keys.principal_streams(principal)
        async with self._gate:
            taken = await self._take_lease(key, stream_id, self._stream_lease_s, self._max_streams)
        if not taken:
            raise QuotaExceeded(
                "RUNSTREAM_MAX_STREAMS_PER_PRINCIPAL",
                f"{self._max_streams} streams open already; close one first",
            )
        self._streams[principal].add(stream_id)
        return stream_id

    async def release_stream(self, principal: str, stream_id: str) -> None:
        """The stream closed: its lease goes now (or expires, if Redis is away)."""
        held = self._streams.get(principal)
        if held is not None:
            held.discard(stream_id)
            if not held:
                del self._streams[principal]
        async with self._gate:
            with self._errors:
                await self._redis.zrem(keys.principal_streams(principal), stream_id)

    @property
    def open_streams(self) -> int:
        """Stream leases this process holds now."""
        return sum(len(ids) for ids in self._streams.values())

    async def _take_lease(self, key: str, member: str, lease_s: float, limit: int) -> bool:
        with self._errors:
            taken = await self._take(keys=[key], args=[member, int(lease_s * 1000), limit])
        return bool(taken)

    async def _renew_streams(self) -> None:
        while True:
            await asyncio.sleep(self._stream_lease_s / 3)
            with contextlib.suppress(BackendUnavailable):  # renewed next round, or expired
                await self._renew_all()

    async def _renew_all(self) -> None:
        snapshot = [(p, list(ids)) for p, ids in self._streams.items() if ids]
        if not snapshot:
            return
        lease_ms = int(self._stream_lease_s * 1000)
        calls: list[ScriptCall] = [
            (self._renew, [keys.principal_streams(principal)], [lease_ms, "XX", *ids])
            for principal, ids in snapshot
        ]
        with self._errors:
            await send_script_calls(self._redis, calls)
