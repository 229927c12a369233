"""A run's event log in Redis: append-and-notify in one round trip, read by ``seq``.

The log is a Redis STREAM whose entry ids are ``<seq>-0``, so Redis itself refuses a
``seq`` that goes back. One Lua script appends a batch of events, PUBLISHes one
notification per event carrying its ``seq``, type and JSON, and refreshes the TTL: a
reader that sees ``seq`` n+2 after n knows it missed n+1 and reads it here. Appends are
idempotent: an event whose ``seq`` is already in the log is skipped, so a retried call
never duplicates. Reading never trims or deletes.

Notification payload: ``b"<seq>\\n<type>\\n<json>"`` (see :func:`decode_notification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import RedisCluster

from runstream.models import PAGE_BYTES, Event
from runstream.streams import keys
from runstream.streams.connection import (
    CommandClient,
    RedisErrors,
    ScriptCall,
    send_script_calls,
)

_APPEND = """
local last, closed = 0, false
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #tail > 0 then
  last = tonumber(string.match(tail[1][1], '^(%d+)'))
  local fields = tail[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'x' then closed = true end
  end
end
local fresh = false
for i = 5, #ARGV, 4 do
  if tonumber(ARGV[i]) > last then fresh = true end
end
if not fresh then return 0 end  -- a retried call: everything is there already
-- Nothing may follow a run's terminal event, whoever holds the lock now.
if closed then return -1 end
if ARGV[3] ~= '' then
  -- Fencing: only the holder of the run's lock may write it. A lock Redis lost (a
  -- restart) is taken back, as renewing it would; a lock another worker holds refuses.
  local holder = redis.call('GET', KEYS[2])
  if not holder then
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  elseif holder ~= ARGV[3] then
    return -1
  end
end
local added = 0
for i = 5, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    if ARGV[i + 3] == '1' then
      redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 't', ARGV[i + 1], 'd', ARGV[i + 2], 'x', '1')
    else
      redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 't', ARGV[i + 1], 'd', ARGV[i + 2])
    end
    redis.call('{publish}', ARGV[1], ARGV[i] .. '\\n' .. ARGV[i + 1] .. '\\n' .. ARGV[i + 2])
    last = seq
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return added
"""


# A page holds up to COUNT entries, stopping once it holds BUDGET bytes of event data:
# so a page of large events costs the reader (and Redis) about BUDGET, not COUNT times
# the largest event. Entries are taken 32 at a time so Redis never holds a huge reply.
_READ = """
local out, total, start = {}, 0, ARGV[1]
local wanted, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
while #out < wanted and total < budget do
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(32, wanted - #out))
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do
    out[#out + 1] = entry
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then total = total + #fields[i + 1] end
    end
    start = '(' .. entry[1]
    if total >= budget or #out >= wanted then break end
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Fence:
    """The run lock a writer holds: only while it is current do its appends land."""

    token: str
    ttl_ms: int  # to take the lock back if Redis lost it (a restart), as a renewal would


REFUSED: Final = -1
"""What an append returns, instead of a count, when its fence is no longer current or the
run's terminal event is already in the log."""


AppendBatch = tuple[str, Sequence[Event], Fence | None]
"""One run's events for :meth:`EventLog.append_many`: run id, events, the writer's fence."""


class EventLog:
    """Appends to and reads from the per-run logs, through the process's command pool.

    Every method raises only runstream's errors (BackendUnavailable, TooManyConnections).
    """

    def __init__(self, redis: CommandClient, *, ttl_s: int, errors: RedisErrors) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._errors = errors
        # On a cluster the notification is a sharded publish: it stays on the run's node.
        publish = "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"
        self._append = redis.register_script(_APPEND.replace("{publish}", publish))
        self._read = redis.register_script(_READ)

    async def append(self, run_id: str, events: Sequence[Event], fence: Fence | None = None) -> int:
        """Append ``events`` (increasing ``seq``) and notify readers; returns how many were
        new, or :data:`REFUSED` when ``fence`` is given and no longer holds the run's lock."""
        if not events:
            return 0
        args = self._args(run_id, events, fence)
        with self._errors:
            added: int = await self._append(keys=self._keys(run_id), args=args)
        return added

    async def append_many(self, batches: Sequence[AppendBatch]) -> list[int]:
        """Append several runs' batches in one pipelined round trip; what :meth:`append`
        returns, for each batch (empty ones count 0).

        Each batch is its run's own atomic append-and-notify; a retry of the whole call
        duplicates nothing.
        """
        if not any(events for _, events, _ in batches):
            return [0] * len(batches)
        calls: list[ScriptCall] = [
            (self._append, self._keys(run_id), self._args(run_id, events, fence))
            for run_id, events, fence in batches
            if events
        ]
        with self._errors:
            results: list[int] = await send_script_calls(self._redis, calls)
        answers = iter(results)
        return [next(answers) if events else 0 for _, events, _ in batches]

    @staticmethod
    def _keys(run_id: str) -> list[str]:
        return [keys.run_events(run_id), keys.run_lock(run_id)]

    def _args(
        self, run_id: str, events: Sequence[Event], fence: Fence | None
    ) -> list[bytes | str | int]:
        args: list[bytes | str | int] = [keys.run_notify(run_id), self._ttl_s]
        args += [fence.token, fence.ttl_ms] if fence is not None else ["", 0]
        for event in events:
            # The terminal event is marked ("x"): the script refuses anything after it.
            args.extend((event.seq, event.type, event.data, "1" if event.is_terminal else "0"))
        return args

    async def read(self, run_id: str, after: int, limit: int = 500) -> list[Event]:
        """Up to ``limit`` events with ``seq > after``, in order, about
        :data:`PAGE_BYTES` at most (always at least one event when there is one)."""
        with self._errors:
            entries: list[list[Any]] = await self._read(
                keys=[keys.run_events(run_id)], args=[f"{after + 1}-0", limit, PAGE_BYTES]
            )
        return [_entry_to_event(entry_id, _fields(flat)) for entry_id, flat in entries]

    async def last_seqs(self, run_ids: Sequence[str]) -> list[int | None]:
        """:meth:`last_seq` of several runs in one pipelined round trip."""
        if not run_ids:
            return []
        with self._errors:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    pipe.xrevrange(keys.run_events(run_id), count=1)
                tails: list[list[tuple[bytes, object]]] = await pipe.execute()
        return [_seq_of(tail[0][0]) if tail else None for tail in tails]

    async def last_seq(self, run_id: str) -> int | None:
        """The highest ``seq`` in the log, or None when the log does not exist."""
        with self._errors:
            tail: list[tuple[bytes, object]] = await self._redis.xrevrange(  # type: ignore[assignment]
                keys.run_events(run_id), count=1
            )
        if not tail:
            return None
        return _seq_of(tail[0][0])


def decode_notification(payload: bytes) -> Event:
    """Turn an append notification back into the event it announces."""
    seq, kind, data = payload.split(b"\n", 2)
    return Event(seq=int(seq), type=kind.decode(), data=data)


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _entry_to_event(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    return Event(seq=_seq_of(entry_id), type=fields[b"t"].decode(), data=fields[b"d"])
