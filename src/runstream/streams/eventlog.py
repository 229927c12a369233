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

from redis.asyncio import Redis

from runstream.models import Event
from runstream.streams import keys
from runstream.streams.connection import RedisErrors

_APPEND = """
local last = 0
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #tail > 0 then last = tonumber(string.match(tail[1][1], '^(%d+)')) end
local added = 0
for i = 3, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 't', ARGV[i + 1], 'd', ARGV[i + 2])
    redis.call('PUBLISH', ARGV[1], ARGV[i] .. '\\n' .. ARGV[i + 1] .. '\\n' .. ARGV[i + 2])
    last = seq
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return added
"""


class EventLog:
    """Appends to and reads from the per-run logs, through the process's command pool.

    Every method raises only runstream's errors (BackendUnavailable, TooManyConnections).
    """

    def __init__(self, redis: Redis, *, ttl_s: int, errors: RedisErrors) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._errors = errors
        self._append = redis.register_script(_APPEND)

    async def append(self, run_id: str, events: Sequence[Event]) -> int:
        """Append ``events`` (increasing ``seq``) and notify readers; returns how many were new."""
        if not events:
            return 0
        args = self._args(run_id, events)
        with self._errors:
            added: int = await self._append(keys=[keys.run_events(run_id)], args=args)
        return added

    async def append_many(self, batches: Sequence[tuple[str, Sequence[Event]]]) -> list[int]:
        """Append several runs' batches in one pipelined round trip; how many were new, each.

        Each batch is its run's own atomic append-and-notify, as :meth:`append`; a retry
        of the whole call duplicates nothing.
        """
        batches = [(run_id, events) for run_id, events in batches if events]
        if not batches:
            return []
        with self._errors:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id, events in batches:
                    await self._append(
                        keys=[keys.run_events(run_id)], args=self._args(run_id, events), client=pipe
                    )
                added: list[int] = await pipe.execute()
        return added

    def _args(self, run_id: str, events: Sequence[Event]) -> list[bytes | str | int]:
        args: list[bytes | str | int] = [keys.run_notify(run_id), self._ttl_s]
        for event in events:
            args.extend((event.seq, event.type, event.data))
        return args

    async def read(self, run_id: str, after: int, limit: int = 500) -> list[Event]:
        """Up to ``limit`` events with ``seq > after``, in order."""
        with self._errors:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(  # type: ignore[assignment]
                keys.run_events(run_id), min=f"{after + 1}-0", max="+", count=limit
            )
        return [_entry_to_event(entry_id, fields) for entry_id, fields in entries]

    async def last_seq(self, run_id: str) -> int | None:
        """The highest ``seq`` in the log, or None when the log does not exist."""
        with self._errors:
            tail: list[tuple[bytes, object]] = await self._redis.xrevrange(  # type: ignore[assignment]
                keys.run_events(run_id), count=1
            )
        if not tail:
            return None
        return _seq_of(tail[0][0])

    async def exists(self, run_id: str) -> bool:
        """Whether Redis still holds any of the run's log."""
        with self._errors:
            return bool(await self._redis.exists(keys.run_events(run_id)))


def decode_notification(payload: bytes) -> Event:
    """Turn an append notification back into the event it announces."""
    seq, kind, data = payload.split(b"\n", 2)
    return Event(seq=int(seq), type=kind.decode(), data=data)


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _entry_to_event(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    return Event(seq=_seq_of(entry_id), type=fields[b"t"].decode(), data=fields[b"d"])
