"""Faults on the streaming side: every one ends with the system back to its baseline."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import orjson
import pytest
import structlog
from httpx_sse import aconnect_sse

from tests.api.streaming import read_first, read_stream, start
from tests.conftest import wait_until
from tests.faults.conftest import FaultSystem
from tests.faults.inject import FailingSubscribe


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events]


async def test_client_disconnecting_mid_stream_releases_everything(system: FaultSystem) -> None:
    client = system.client
    run_ids = [await start(client, "scripted", count=50, interval_ms=20) for _ in range(5)]
    await asyncio.gather(*(read_first(client, r, 3) for r in run_ids for _ in range(4)))
    for run_id in run_ids:
        assert ids(await read_stream(client, run_id)) == list(range(1, 53))
    await system.assert_back_to_baseline()


async def test_client_disconnecting_before_the_first_event_releases_everything(
    system: FaultSystem,
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=1, hang=True)
    for _ in range(20):
        async with client.stream("GET", f"/runs/{run_id}/stream") as response:
            assert response.status_code == 200  # headers only: leave before any event
    await client.post(f"/runs/{run_id}/stop")
    assert (await read_stream(client, run_id))[-1]["data"]["status"] == "stopped"
    await system.assert_back_to_baseline()


async def test_client_disconnecting_during_replay_releases_everything(
    system: FaultSystem,
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=1500, payload_bytes=200)
    full = await read_stream(client, run_id)
    assert len(full) == 1502
    await asyncio.gather(*(read_first(client, run_id, 700) for _ in range(10)))
    await system.assert_back_to_baseline()


@pytest.fixture
def fault_settings() -> dict[str, Any]:
    return {"subscriber_queue_size": 2}


async def test_reader_too_slow_for_its_queue_falls_back_to_the_log(system: FaultSystem) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=200, interval_ms=1)
    events: list[dict[str, Any]] = []
    async with aconnect_sse(client, "GET", f"/runs/{run_id}/stream") as source:
        async for sse in source.aiter_sse():
            if sse.data:
                events.append({"id": sse.id, "data": orjson.loads(sse.data)})
                if len(events) % 20 == 0:
                    await asyncio.sleep(0.05)  # a reader slower than the run
    assert ids(events) == list(range(1, 203))
    assert system.api.resources.hub.stats().subscribers == 0
    await system.assert_back_to_baseline()


async def test_pubsub_connection_killed_mid_stream_loses_nothing(system: FaultSystem) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=150, interval_ms=10)
    reader = asyncio.create_task(read_stream(client, run_id))
    await read_first(client, run_id, 5)
    with system.server.admin() as admin:
        assert admin.client_kill_filter(_type="pubsub") >= 2  # the API's and the worker's
    events = await asyncio.wait_for(reader, 30)
    assert ids(events) == list(range(1, 153))
    await system.assert_back_to_baseline()


async def test_subscribe_failing_at_stream_start_releases_everything(
    system: FaultSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=3)
    full = await read_stream(client, run_id)
    with FailingSubscribe(f"{run_id}}}:notify").installed(monkeypatch):
        for _ in range(3):
            async with client.stream("GET", f"/runs/{run_id}/stream") as response:
                body = b"".join([chunk async for chunk in response.aiter_bytes()])
                # Either refused at once (503) or ended before any event: never a hang.
                assert response.status_code in (200, 503) and b"event:" not in body
    # The hub rebuilt its connection after the failed command; streams are served again.
    assert await system.api.resources.hub.wait_connected(10)
    assert await read_stream(client, run_id) == full
    await system.assert_back_to_baseline()


async def test_a_reader_that_stops_reading_is_cut_with_one_log_line(
    system: FaultSystem, caplog: pytest.LogCaptureFixture
) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=160, payload_bytes=100_000)
    await read_stream(client, run_id)  # finished: its replay is ~16 MB, more than any buffer
    host, port = system.api.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's buffer stays full
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    with structlog.testing.capture_logs() as logs:
        writer.write(f"GET /runs/{run_id}/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        await reader.readexactly(64)  # the stream started; from now on nobody reads
        hub = system.api.resources.hub
        await wait_until(lambda: hub.stats().subscribers == 0, timeout=30)
    writer.close()
    cut = [e for e in logs if e["event"] == "stream ended: the client stopped reading"]
    assert len(cut) == 1
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # uvicorn's too
    await system.assert_back_to_baseline()
