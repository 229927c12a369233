"""The system on a real Redis Cluster: an API and a worker with ``RUNSTREAM_REDIS_CLUSTER=1``
and ``RUNSTREAM_REDIS_URL`` naming one node, as a user would configure them.

Every test ends with the same check: once its processes are gone, no runstream
connection is left on any node and no task in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from runstream.config import Settings
from tests.conftest import wait_tasks_gone, wait_until
from tests.redis_cluster import RedisCluster
from tests.system import make_settings

MakeSettings = Callable[..., Settings]


@pytest.fixture
def cluster_settings(redis_cluster: RedisCluster, sqlite_url: str) -> MakeSettings:
    """Settings for a process of the test's system on the cluster (``instance=`` required)."""

    def make(instance: str, **overrides: Any) -> Settings:
        return make_settings(
            redis_cluster.url, sqlite_url, redis_cluster=True, instance=instance, **overrides
        )

    return make


@pytest.fixture(autouse=True)
async def no_cluster_leaks(redis_cluster: RedisCluster) -> AsyncIterator[None]:
    """Fail the test if it leaves a runstream connection on any node, or a task."""
    redis_cluster.wait_formed()
    before = set(asyncio.all_tasks())
    yield
    await wait_tasks_gone(before)

    def connections_left() -> dict[int, list[str]]:
        return {port: names for port, names in redis_cluster.client_names().items() if names}

    try:
        await wait_until(lambda: not connections_left(), timeout=10)
    except AssertionError:
        raise AssertionError(f"connections left: {connections_left()}") from None
