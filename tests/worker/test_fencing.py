"""One writer per run, enforced: a worker whose run lock another worker took stops
writing that run; the append script refuses it (a fencing token), so two workers never
interleave one run's events."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from runstream.streams import keys
from tests.api.streaming import read_stream, start
from tests.conftest import wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("worker")


async def test_a_worker_that_lost_its_run_lock_writes_nothing_more(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    run_id = await start(client, "scripted", count=200, interval_ms=20)
    admin = redis_server.admin()
    events_key, lock_key = keys.run_events(run_id), keys.run_lock(run_id)
    await wait_until(lambda: admin.xlen(events_key) >= 5, timeout=10)
    admin.set(lock_key, "another-worker:token", px=60_000)  # another worker owns it now
    taken_at = admin.xlen(events_key)
    final = (await asyncio.wait_for(read_stream(client, run_id), 30))[-1]["data"]
    # At most the batch that was already in flight landed after the takeover.
    assert admin.xlen(events_key) <= taken_at + 1
    assert final["status"] == "failed" and "lock held by another worker" in final["error"]
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == "failed" and run["error"] == final["error"]
    assert admin.get(lock_key) == b"another-worker:token"  # never taken back by the old owner
    admin.delete(lock_key)
    admin.close()
