"""Outages a browser survives: a stream (re)opened while pub/sub reconnects or Redis is
away is answered 200, never 503, so an EventSource, which treats any other answer as
final, comes back by itself; after Redis restarts no request fails on a stale connection."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tests.api.streaming import read_stream, start
from tests.conftest import wait_until
from tests.faults.conftest import FaultSystem, kill_connections


async def follow_as_an_eventsource(
    client: httpx.AsyncClient, run_id: str, *, after: int = 0, attempts: int = 50
) -> tuple[list[int], list[int]]:
    """Follow the run the way a browser's EventSource does: reconnect with the last id
    after the stream ends, until a 204 or the terminal event. Returns the seqs received
    and every status answered; fails at the first answer an EventSource would not retry."""
    seqs: list[int] = []
    statuses: list[int] = []
    last = after
    for _ in range(attempts):
        headers = {"Last-Event-ID": str(last)} if last else {}
        async with client.stream("GET", f"/runs/{run_id}/stream", headers=headers) as response:
            statuses.append(response.status_code)
            assert response.status_code in (200, 204), (response.status_code, statuses)
            if response.status_code == 204:
                return seqs, statuses
            body = await response.aread()
        assert body.startswith(b"retry: "), body[:40]  # every stream says when to come back
        terminal = False
        for message in body.split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in message.split(b"\n") if b": " in line)
            if b"id" in fields:
                last = int(fields[b"id"])
                seqs.append(last)
                data = orjson.loads(fields[b"data"])
                terminal = data["type"] == "status" and data["status"] != "running"
        if terminal:
            return seqs, statuses
        await asyncio.sleep(0.2)  # the retry: delay, shortened
    raise AssertionError(f"no terminal event after {attempts} reconnects: {statuses}")


async def test_resumes_while_pubsub_reconnects_are_held_and_served(system: FaultSystem) -> None:
    client, hub = system.client, system.api.resources.hub
    run_id = await start(client, "scripted", count=40, interval_ms=50)
    with system.server.admin() as admin:
        # The API's pub/sub connection dies and cannot come back for a while.
        assert kill_connections(admin, "runstream:api:api1:pubsub", then_refuse=True) == 1
        try:
            await wait_until(lambda: not hub.healthy, timeout=10)
            readers = [
                asyncio.create_task(follow_as_an_eventsource(client, run_id, after=n))
                for n in (0, 1, 2, 3, 5, 8)
            ]
            await asyncio.sleep(0.5)  # the readers are waiting for the hub now
            assert not any(r.done() for r in readers)
        finally:
            admin.config_set("maxclients", 10000)
        results = await asyncio.wait_for(asyncio.gather(*readers), 60)
    for (seqs, statuses), after in zip(results, (0, 1, 2, 3, 5, 8), strict=True):
        assert seqs == list(range(after + 1, 43)), statuses
        assert 503 not in statuses
    await system.assert_back_to_baseline()


async def test_a_longer_outage_answers_200_with_a_retry_hint(system: FaultSystem) -> None:
    client = system.client
    run_id = await start(client, "scripted", count=5)
    full = await read_stream(client, run_id)
    system.server.stop()
    try:
        response = await client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "2"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content.startswith(b"retry: ") and b"id: " not in response.content
        assert response.headers["cache-control"] == "no-cache, no-transform"
    finally:
        system.server.start()
    # The server came back empty: the run is replayed from the archive.
    seqs, statuses = await follow_as_an_eventsource(client, run_id, after=2)
    assert seqs == [int(e["id"]) for e in full][2:]
    assert set(statuses) <= {200, 204}


async def test_no_request_fails_on_a_stale_connection_after_redis_restarts(
    system: FaultSystem,
) -> None:
    client = system.client
    run_ids = [await start(client, "scripted", count=3) for _ in range(4)]
    for run_id in run_ids:
        await read_stream(client, run_id)
    # Fill the pool with connections, every one of which the restart will close.
    await asyncio.gather(*(client.get(f"/runs/{r}") for r in run_ids * 4))
    system.server.restart()

    async def healthy() -> bool:
        return (await client.get("/healthz")).status_code == 200

    deadline = asyncio.get_running_loop().time() + 20
    while not await healthy():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    answers: list[httpx.Response] = []
    for _ in range(3):
        answers += await asyncio.gather(
            *(client.get(f"/runs/{r}/stream", headers={"Last-Event-ID": "1"}) for r in run_ids),
            *(client.get(f"/runs/{r}") for r in run_ids),
            client.post("/runs", json={"agent": "echo", "input": {"text": "after"}}),
        )
    failed: list[Any] = [(r.status_code, r.text[:200]) for r in answers if r.status_code >= 500]
    assert failed == []
    assert all(r.content.count(b"id: ") >= 2 for r in answers if r.url.path.endswith("/stream"))
