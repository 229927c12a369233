"""The pattern's worker: ``run_agent_background`` of the original, with a scripted agent.

Per running run: a lock, an ``active_run`` key, one PubSub on the run's two control
channels and a listener task for STOP; each event ``RPUSH`` then ``PUBLISH new``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bench.pattern.common import (
    QUEUE_KEY,
    RESPONSE_TTL_S,
    Settings,
    control_channel,
    encode_event,
    instance_control_channel,
    redis_client,
    response_channel,
    responses_key,
)
from bench.pattern.store import Store


class Worker:
    """One worker process: a BRPOP loop feeding up to ``worker_concurrency`` runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Redis = redis_client(settings, "worker", "cmd")
        self.pubsub_redis: Redis = redis_client(settings, "worker", "pubsub")
        self.queue_redis: Redis = redis_client(settings, "worker", "queue")
        self.store = Store(settings.database_url)
        self.slots = asyncio.Semaphore(settings.worker_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Wait for running runs (bounded by the caller), then close every pool."""
        await self.redis.aclose()
        await self.pubsub_redis.aclose()
        await self.queue_redis.aclose()
        await self.store.close()

    async def consume(self, stopping: asyncio.Event) -> None:
        """Take jobs until ``stopping`` is set."""
        while not stopping.is_set():
            await self.slots.acquire()
            item = await self.queue_redis.brpop([QUEUE_KEY], timeout=1)
            if item is None:
                self.slots.release()
                continue
            job = orjson.loads(item[1])
            task = asyncio.create_task(self._guarded(job["id"], job["input"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _guarded(self, run_id: str, input: dict[str, Any]) -> None:
        try:
            await self.run(run_id, input)
        finally:
            self.slots.release()

    async def run(self, run_id: str, input: dict[str, Any]) -> None:
        """Execute one run as ``run_agent_background`` did (after the seed's fixes)."""
        redis, instance = self.redis, self.settings.instance
        lock_key, active_key = f"agent_run_lock:{run_id}", f"active_run:{instance}:{run_id}"
        if not await redis.set(lock_key, instance, nx=True, ex=RESPONSE_TTL_S):
            return
        await redis.set(active_key, "running", ex=RESPONSE_TTL_S)
        key, channel = responses_key(run_id), response_channel(run_id)
        stop = asyncio.Event()
        pubsub: PubSub = self.pubsub_redis.pubsub()
        try:
            await pubsub.subscribe(
                instance_control_channel(run_id, instance), control_channel(run_id)
            )
        except Exception:
            # Fix 1: close it before re-raising.
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        listener = asyncio.create_task(_listen_stop(pubsub, stop))
        seq = 0

        async def push(event: dict[str, Any]) -> None:
            nonlocal seq
            seq += 1
            await redis.rpush(key, encode_event(seq, event))
            await redis.publish(channel, "new")

        status, error = "completed", None
        try:
            await push({"type": "status", "status": "running"})
            status = await _scripted(input, push, stop)
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            final: dict[str, Any] = {"type": "status", "status": status}
            if error:
                final["error"] = error
            await push(final)
            responses = [orjson.loads(r) for r in await redis.lrange(key, 0, -1)]
            await self.store.finish(run_id, status, error, responses)
            await redis.publish(control_channel(run_id), "END_STREAM")
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
            # Fix 2: aclose(), not close().
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.expire(key, RESPONSE_TTL_S)
            await redis.delete(active_key, lock_key)


async def _listen_stop(pubsub: PubSub, stop: asyncio.Event) -> None:
    async for message in pubsub.listen():
        if message and message.get("type") == "message" and message.get("data") == "STOP":
            stop.set()
            return


async def _scripted(input: dict[str, Any], push: Any, stop: asyncio.Event) -> str:
    """runstream's ``scripted`` agent: ``count`` ticks at ``interval_ms``, maybe ``hang``."""
    count = int(input.get("count", 0))
    interval = float(input.get("interval_ms", 0)) / 1000
    payload = "x" * int(input.get("payload_bytes", 0))
    fail_after = input.get("fail_after")
    for n in range(1, count + 1):
        if fail_after is not None and fail_after == n - 1:
            raise RuntimeError(f"scripted failure after {n - 1} ticks")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return "stopped"
        await push({"type": "tick", "n": n, "payload": payload})
    if input.get("hang"):
        await stop.wait()
        return "stopped"
    return "completed"


async def run_worker(settings: Settings | None = None) -> None:
    """The worker process until SIGTERM/SIGINT; running runs get 5 s, then are cancelled."""
    worker = Worker(settings or Settings.from_env())
    await worker.store.create_schema()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    consumer = asyncio.create_task(worker.consume(stopping))
    try:
        await stopping.wait()
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        if worker.tasks:
            _, pending = await asyncio.wait(set(worker.tasks), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await worker.aclose()
