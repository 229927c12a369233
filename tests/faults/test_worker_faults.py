"""Faults on the worker side and of Redis itself: every one ends back at the baseline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.streaming import read_stream, start
from tests.faults.conftest import FaultSystem
from tests.faults.inject import FailingSubscribe


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events]


async def wait_status(system: FaultSystem, run_id: str, *statuses: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            run: dict[str, Any] = (await system.client.get(f"/runs/{run_id}")).json()
            if run["status"] in statuses:
                return run
            await asyncio.sleep(0.02)


async def test_agent_raising_fails_the_run_and_releases_everything(system: FaultSystem) -> None:
    run_ids = [await start(system.client, "scripted", count=5, fail_after=k) for k in (0, 2, 4)]
    for run_id in run_ids:
        final = (await read_stream(system.client, run_id))[-1]["data"]
        assert final["status"] == "failed" and final["error"].startswith("RuntimeError")
    await system.assert_back_to_baseline()


async def test_agent_ignoring_a_stop_is_cancelled_and_releases_everything(
    system: FaultSystem,
) -> None:
    run_id = await start(system.client, "scripted", count=2, hang=True, ignore_stop=True)
    await wait_status(system, run_id, "running")
    assert (await system.client.post(f"/runs/{run_id}/stop")).status_code == 202
    assert (await read_stream(system.client, run_id))[-1]["data"]["status"] == "stopped"
    await system.assert_back_to_baseline()


async def test_subscribe_failing_at_worker_start_leaves_the_run_queued_then_runs_it(
    system: FaultSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FailingSubscribe(":control").installed(monkeypatch) as failing:
        run_id = await start(system.client, "scripted", count=3)
        async with asyncio.timeout(20):
            while failing.failures < 2:  # the worker tried, failed, and tried again
                await asyncio.sleep(0.02)
        assert (await system.client.get(f"/runs/{run_id}")).json()["status"] == "queued"
    events = await asyncio.wait_for(read_stream(system.client, run_id), 30)
    assert ids(events) == [1, 2, 3, 4, 5] and events[-1]["data"]["status"] == "completed"
    await system.assert_back_to_baseline()


async def test_redis_restarted_mid_run_the_run_ends_and_connections_come_back(
    system: FaultSystem,
) -> None:
    run_id = await start(system.client, "scripted", count=80, interval_ms=25)
    await wait_status(system, run_id, "running")
    async with asyncio.timeout(10):
        while (await system.client.get(f"/runs/{run_id}")).json()["last_seq"] < 10:
            await asyncio.sleep(0.02)
    system.server.restart()  # empty: no persistence, as in the incident's deployment
    run = await wait_status(system, run_id, "completed", "failed")
    assert run["status"] == "completed"
    events = await read_stream(system.client, run_id)
    # What the restart lost is announced as a gap; everything after it arrives in order.
    assert events[-1]["data"]["status"] == "completed" and int(events[-1]["id"]) == 82
    if events[0]["event"] == "gap":
        assert events[0]["data"]["from"] == 1
        assert ids(events[1:]) == list(range(events[0]["data"]["to"] + 1, 83))
    await system.assert_back_to_baseline(timeout=30)
