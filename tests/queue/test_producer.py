"""The producer: streaq's Lua function over redis-py writes what streaq's own enqueue writes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis
from streaq import Worker

from runstream.queue import TASK_NAME, open_queue
from runstream.queue.consumer import Consumer
from runstream.queue.producer import TaskProducer
from runstream.resources import open_commands
from runstream.streams.connection import RedisErrors, open_redis
from runstream.streams.keys import queue_keys, queue_prefix
from tests.system import make_settings

ERRORS = RedisErrors(role="test", instance="t")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url, role="test", instance="t") as client:
        yield client


async def contents(redis: Redis, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` (renamed without it) with what it holds, the enqueue
    times left out (they differ between two enqueues)."""
    found: dict[str, object] = {}
    async for key in redis.scan_iter(match=f"{prefix}*"):
        name = key.decode().removeprefix(prefix)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            data = orjson.loads(await redis.get(key))
            data.pop("t")
            found[name] = data
        elif kind == "stream":
            entries = await redis.xrange(key)
            found[name] = [{k: v for k, v in f.items() if k != b"enqueue_time"} for _, f in entries]
        else:
            found[name] = kind
    return found


def streaq_worker(redis_url: str, name: str) -> Worker:
    return Worker(
        redis_url=redis_url,
        queue_name=queue_prefix(name),
        serializer=orjson.dumps,
        deserializer=orjson.loads,
    )


async def test_the_keys_are_the_ones_streaq_derives(redis_url: str) -> None:
    worker = streaq_worker(redis_url, "runs")
    keys = queue_keys("runs")
    assert keys.stream == worker.stream_key + "normal"
    assert keys.delayed == worker.queue_key + "normal"
    assert keys.task_prefix == worker.task_key
    assert (keys.dependents, keys.dependencies) == (worker.dependents_key, worker.dependencies_key)
    assert keys.results == worker.results_key


async def test_a_published_task_is_what_streaqs_own_enqueue_writes(
    redis_url: str, redis: Redis
) -> None:
    theirs = streaq_worker(redis_url, "theirs")
    async with theirs:
        task = theirs.enqueue_unsafe(TASK_NAME, "run-1")
        task.id = "run-1"
        await task
    producer = TaskProducer(redis, queue_keys("ours"), ERRORS)
    assert await producer.publish("run-1", TASK_NAME, "run-1")

    written = await contents(redis, f"streaq:{queue_prefix('ours')}")
    assert written == await contents(redis, f"streaq:{queue_prefix('theirs')}")
    assert written[":task:data:run-1"] == {"f": TASK_NAME, "a": ["run-1"], "k": {}}
    assert written[":queues:normal"] == [{b"task_id": b"run-1"}]


async def test_publishing_a_task_that_exists_is_a_no_op(redis: Redis) -> None:
    producer = TaskProducer(redis, queue_keys("twice"), ERRORS)
    assert await producer.publish("run-1", TASK_NAME, "run-1")
    assert not await producer.publish("run-1", TASK_NAME, "run-1")
    assert await redis.xlen(queue_keys("twice").stream) == 1


async def test_a_redis_that_lost_the_functions_gets_them_back(redis: Redis) -> None:
    await redis.function_flush()
    producer = TaskProducer(redis, queue_keys("flushed"), ERRORS)
    assert await producer.publish("run-1", TASK_NAME, "run-1")
    assert await redis.function_list(library="streaq")
    assert await redis.xlen(queue_keys("flushed").stream) == 1


async def test_streaqs_consumer_executes_what_the_api_enqueues(
    redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="w", queue_name="handover")
    executed: list[str] = []
    consumer = Consumer(settings)

    async def execute(run_id: str) -> None:
        executed.append(run_id)
        consumer.stop()

    async with asyncio.TaskGroup() as tasks:
        consuming = tasks.create_task(consumer.consume(execute))
        api = make_settings(redis_url, sqlite_url, instance="a", queue_name="handover")
        async with open_commands(api, role="api") as client:
            async with open_queue(api, role="api", redis=client) as queue:
                await queue.enqueue("run-7")
        async with asyncio.timeout(10):
            await consuming
    assert executed == ["run-7"]


def test_the_api_does_not_load_the_queue_library() -> None:
    code = (
        "import sys, runstream.api.app, runstream.cli.main;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'streaq', 'coredis'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
