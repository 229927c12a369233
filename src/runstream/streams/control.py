"""Run coordination in Redis: the per-run lock and the durable stop request.

A stop is a flag (durable: a worker that starts the run later still sees it) plus a
message on the run's control channel (fast: the owning worker hears it at once).
The lock makes a run execute once: its value is the owning worker's instance, its TTL
is renewed while the worker lives, so a dead worker's runs become visibly orphaned.
"""

from __future__ import annotations

from runstream.streams import keys
from runstream.streams.connection import CommandClient, RedisErrors
from runstream.streams.pubsub import publish

STOP_MESSAGE = b"stop"

_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RunControl:
    """Locks and stop requests for runs, through the process's command pool.

    Every method raises only runstream's errors (BackendUnavailable, TooManyConnections).
    """

    def __init__(self, redis: CommandClient, *, stop_ttl_s: int, errors: RedisErrors) -> None:
        self._redis = redis
        self._errors = errors
        self._stop_ttl_s = stop_ttl_s
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def request_stop(self, run_id: str) -> None:
        """Record the stop durably, then tell whoever owns the run."""
        with self._errors:
            await self._redis.set(keys.run_stop(run_id), b"1", ex=self._stop_ttl_s)
            await publish(self._redis, keys.run_control(run_id), STOP_MESSAGE)

    async def stop_requested(self, run_id: str) -> bool:
        """Whether a stop was ever requested for the run (within the flag's TTL)."""
        with self._errors:
            return bool(await self._redis.exists(keys.run_stop(run_id)))

    async def acquire(self, run_id: str, owner: str, ttl_s: float) -> bool:
        """Take the run's lock for ``owner``; False when another owner holds it."""
        with self._errors:
            taken = await self._redis.set(
                keys.run_lock(run_id), owner, nx=True, px=int(ttl_s * 1000)
            )
        return bool(taken)

    async def renew(self, run_id: str, owner: str, ttl_s: float) -> bool:
        """Extend the lock, or re-take it if Redis lost it; False if another owner has it."""
        with self._errors:
            kept = await self._renew(keys=[keys.run_lock(run_id)], args=[owner, int(ttl_s * 1000)])
        return bool(kept)

    async def release(self, run_id: str, owner: str) -> None:
        """Give the lock back, only if ``owner`` still holds it."""
        with self._errors:
            await self._release(keys=[keys.run_lock(run_id)], args=[owner])

    async def lock_holder(self, run_id: str) -> str | None:
        """The instance holding the run's lock, if any."""
        with self._errors:
            value = await self._redis.get(keys.run_lock(run_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
