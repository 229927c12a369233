"""Fixtures shared by every test: a private redis-server and leak accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

pytest_plugins = ("tests.fixtures",)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local Redis Cluster (three masters, three replicas) for the session."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (no persistence, free loopback port), for tests
    that run runstream as processes or kill every pub/sub client on the server."""
    server = RedisServer(tmp_path / "redis-data")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server, running, emptied, with its default client limit."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    with redis_server.admin() as client:
        client.flushall()
        client.config_set("maxclients", 10000)
    return redis_server.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runstream.db'}"


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait for a condition, failing the test with a clear message when it never holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(0.01)


def task_names() -> set[asyncio.Task[object]]:
    return set(asyncio.all_tasks())


async def wait_tasks_gone(before: set[asyncio.Task[Any]], timeout: float = 10) -> None:
    """Wait until no task is left but those of ``before`` (and this one); else fail."""
    current = asyncio.current_task()

    def left() -> set[asyncio.Task[Any]]:
        return set(asyncio.all_tasks()) - before - {current}

    try:
        await wait_until(lambda: not left(), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"tasks left behind: {left()}") from None


@pytest.fixture
async def no_task_leaks() -> AsyncIterator[None]:
    """Fail the test if it leaves a task behind (DESIGN.md I3)."""
    before = set(asyncio.all_tasks())
    yield
    await wait_tasks_gone(before, timeout=5)
