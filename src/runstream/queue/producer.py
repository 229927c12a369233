"""Enqueueing without the queue library: streaq's own Lua function, called over redis-py.

A producer needs none of streaq's consumer machinery, yet importing streaq loads coredis
and beartype (about 14 MiB of RSS) and opens a coredis pool of its own. So the API calls
the function streaq loads into Redis (``publish_task``, library ``streaq``) with FCALL
on the process's command client, and a worker's sweeper does the same: the task a
consumer reads is the one ``Worker.enqueue`` would have written, byte for byte
(tests/queue checks the two side by side). streaq is pinned to a minor version in
pyproject.toml because this call and ``keys.queue_keys`` are its wire format.
"""

from __future__ import annotations

import importlib.util
import time
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from redis.exceptions import ResponseError

from runstream.errors import BackendUnavailable
from runstream.streams.connection import CommandClient, RedisErrors
from runstream.streams.keys import QueueKeys

log = structlog.get_logger(__name__)

LIBRARY: Final = "streaq"
FUNCTION: Final = "publish_task"


class TaskProducer:
    """Publishes tasks to one streaq queue through a redis-py client it does not own."""

    def __init__(self, redis: CommandClient, keys: QueueKeys, errors: RedisErrors) -> None:
        self._redis = redis
        self._keys = keys
        self._errors = errors

    async def publish(self, task_id: str, function: str, *args: Any) -> bool:
        """Queue ``function(*args)`` as task ``task_id``; False when that task already
        exists (the queue keeps one task per id until its result expires).

        Raises BackendUnavailable (TooManyConnections for an exhausted pool).
        """
        now = time.time_ns() // 1_000_000
        data = orjson.dumps({"f": function, "a": list(args), "k": {}, "t": now})
        with self._errors:
            try:
                return await self._call(task_id, data, now)
            except ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                # Redis restarted (or was flushed) since a consumer loaded the library.
                await self._redis.function_load(_library_code(), replace=True)
                log.warning("queue functions reloaded (Redis lost them)", library=LIBRARY)
                return await self._call(task_id, data, now)

    async def _call(self, task_id: str, data: bytes, now: int) -> bool:
        keys = self._keys.for_task(task_id)
        # score 0 (now, not delayed), expire 0 (the task never expires while queued).
        command: list[str | bytes | int] = ["FCALL", FUNCTION, len(keys), *keys]
        command += [task_id, data, 0, 0, now]
        # On a cluster redis-py asks a node where an FCALL goes (COMMAND GETKEYS, one more
        # round trip); naming the node instead would turn off its retries through a
        # failover, and an enqueue is one command per run.
        result = await self._redis.execute_command(*command)
        return bool(result)


@cache
def _library_code() -> str:
    """streaq's Lua library, read from its installed package without importing it."""
    spec = importlib.util.find_spec(LIBRARY)
    try:
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the streaq package is not installed")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return (folder / "lua" / "streaq.lua").read_text()
    except OSError as exc:  # a broken install: the enqueue fails like an outage, mapped
        raise BackendUnavailable(
            f"queue unavailable: streaq's Lua library cannot be read ({exc})",
            dependency="the queue",
        ) from exc
