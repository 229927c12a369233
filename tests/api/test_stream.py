"""GET /runs/{id}/stream: replay, live follow, resume, many readers, stop, failure."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from runstream.metrics import REGISTRY
from runstream.store.database import open_store
from tests.api.checks import assert_error
from tests.api.streaming import read_first, read_stream, start
from tests.redis_server import RedisServer
from tests.system import Api, Worker, make_settings, running_api

pytestmark = pytest.mark.usefixtures("worker")


def seqs(events: list[dict[str, object]]) -> list[int]:
    return [int(str(e["id"])) for e in events]


async def test_stream_follows_a_run_until_its_terminal_event_then_closes(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "echo", text="alpha beta gamma", interval_ms=20)
    events = await read_stream(client, run_id)
    assert [e["event"] for e in events] == ["status", "token", "token", "token", "status"]
    assert events[0]["data"] == {**events[0]["data"], "type": "status", "status": "running"}
    assert [e["data"].get("text") for e in events[1:4]] == ["alpha", "beta", "gamma"]
    assert events[-1]["data"]["status"] == "completed"
    assert seqs(events) == [1, 2, 3, 4, 5]
    assert all(e["data"]["seq"] == int(e["id"]) and e["data"]["ts"].endswith("Z") for e in events)


async def test_stream_resumes_after_last_event_id_without_gap_or_duplicate(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "scripted", count=20, interval_ms=5)
    full = await read_stream(client, run_id)
    for cut in (0, 1, 7, 21):
        rest = await read_stream(client, run_id, last_event_id=cut)
        assert seqs(rest) == [s for s in seqs(full) if s > cut]
        assert rest == full[cut:]
    # At the terminal event: 204, so an EventSource stops reconnecting.
    response = await client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "22"})
    assert response.status_code == 204


async def test_stream_accepts_after_query_and_header_wins(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=5)
    full = await read_stream(client, run_id)
    assert await read_stream(client, run_id, after=3) == full[3:]
    assert await read_stream(client, run_id, after=1, last_event_id=4) == full[4:]


async def test_two_readers_see_identical_streams(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=30, interval_ms=10)
    first, second = await asyncio.gather(read_stream(client, run_id), read_stream(client, run_id))
    assert first == second
    assert seqs(first) == list(range(1, 33))


async def test_reader_resuming_mid_run_gets_every_event_once(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=40, interval_ms=10)
    seen = await read_first(client, run_id, 10)  # the client goes away mid-run
    seen += await read_stream(client, run_id, last_event_id=int(str(seen[-1]["id"])))
    assert seqs(seen) == list(range(1, 43))


async def test_failed_run_ends_with_failed_status_and_error(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=5, fail_after=2)
    events = await read_stream(client, run_id)
    assert [e["event"] for e in events] == ["status", "tick", "tick", "status"]
    assert events[-1]["data"]["status"] == "failed"
    # The agent's message stays in the worker log (RUNSTREAM_EXPOSE_AGENT_ERRORS is off).
    assert events[-1]["data"]["error"] == "RuntimeError (details in the worker log)"
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == "failed" and run["error"] == events[-1]["data"]["error"]
    assert run["last_seq"] == 4


async def test_stop_of_a_hanging_run_ends_it_stopped(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=2, hang=True)
    reader = asyncio.create_task(read_stream(client, run_id))
    await _wait_status(client, run_id, "running")
    assert (await client.post(f"/runs/{run_id}/stop")).status_code == 202
    events = await asyncio.wait_for(reader, 15)
    assert [e["event"] for e in events] == ["status", "tick", "tick", "status"]
    assert events[-1]["data"]["status"] == "stopped"
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "stopped"


async def test_stop_of_an_agent_that_ignores_it_is_forced_after_the_grace(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "scripted", count=1, hang=True, ignore_stop=True)
    await _wait_status(client, run_id, "running")
    assert (await client.post(f"/runs/{run_id}/stop")).status_code == 202
    events = await asyncio.wait_for(read_stream(client, run_id), 15)
    assert events[-1]["data"]["status"] == "stopped"


async def test_record_is_final_when_the_terminal_event_is_seen(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        run_id = await start(client, "echo", text="x y")
        events = await read_stream(client, run_id)
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == events[-1]["data"]["status"] == "completed"
        assert run["completed_at"] is not None and run["last_seq"] == int(events[-1]["id"])


async def test_finished_run_replays_from_the_database_once_redis_lost_its_log(
    client: httpx.AsyncClient, redis_server: RedisServer, sqlite_url: str
) -> None:
    run_id = await start(client, "scripted", count=3)
    full = await read_stream(client, run_id)
    async with open_store(sqlite_url) as store:  # archiving may follow the terminal event
        async with asyncio.timeout(10):
            while len(await store.read_events(run_id, 0, 100)) < len(full):
                await asyncio.sleep(0.01)
    with redis_server.admin() as admin:
        assert admin.delete(f"runstream:run:{{{run_id}}}:events") == 1
    assert await read_stream(client, run_id) == full
    assert await read_stream(client, run_id, last_event_id=2) == full[2:]


async def test_events_lost_mid_run_are_reported_as_one_gap(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    run_id = await start(client, "scripted", count=60, interval_ms=20)
    await read_first(client, run_id, 5)
    async with asyncio.timeout(10):  # events 6.. exist before they are lost
        while (await client.get(f"/runs/{run_id}")).json()["last_seq"] < 10:
            await asyncio.sleep(0.01)
    with redis_server.admin() as admin:  # as if Redis restarted empty mid-run
        admin.delete(f"runstream:run:{{{run_id}}}:events")
    rest = await read_stream(client, run_id, last_event_id=5)
    assert rest[0]["event"] == "gap"
    gap = rest[0]["data"]
    assert gap["from"] == 6 and gap["to"] == int(str(rest[0]["id"])) and gap["to"] >= 6
    assert seqs(rest[1:]) == list(range(gap["to"] + 1, 63))
    assert rest[-1]["data"]["status"] == "completed"


async def test_stream_sends_heartbeat_comments_while_idle(api: Api, worker: Worker) -> None:
    async with api.client() as client:
        run_id = await start(client, "scripted", count=1, hang=True)
        async with client.stream("GET", f"/runs/{run_id}/stream") as response:
            lines = []
            async for line in response.aiter_lines():
                lines.append(line)
                if line.startswith(":"):
                    break
        assert any(line.startswith(":") for line in lines)
        await client.post(f"/runs/{run_id}/stop")


async def _wait_status(client: httpx.AsyncClient, run_id: str, status: str) -> None:
    async with asyncio.timeout(10):
        while (await client.get(f"/runs/{run_id}")).json()["status"] != status:
            await asyncio.sleep(0.02)


async def test_a_busy_pool_makes_streams_wait_their_turn_never_fail(
    redis_url: str, sqlite_url: str
) -> None:
    # Three command connections with a 50 ms pool wait: 200 readers at once would time
    # out on the pool if they asked it directly; through the shared reads they queue.
    settings = make_settings(
        redis_url, sqlite_url, instance="tiny", redis_max_connections=3, redis_timeout_s=0.05
    )
    refused = REGISTRY.get_sample_value(
        "runstream_too_many_connections_total", {"role": "api", "instance": "tiny"}
    )
    async with running_api(settings) as api:
        limits = httpx.Limits(max_connections=400)
        async with api.client(limits=limits) as client:
            run_ids = [await start(client, "scripted", count=20, interval_ms=5) for _ in range(10)]
            streams = await asyncio.gather(
                *(read_stream(client, run_ids[i % 10]) for i in range(200))
            )
    for events in streams:
        assert seqs(events) == list(range(1, len(streams[0]) + 1))
        assert events[-1]["data"]["status"] == "completed"
    after = REGISTRY.get_sample_value(
        "runstream_too_many_connections_total", {"role": "api", "instance": "tiny"}
    )
    assert after == refused  # the pool never said "Too many connections"


async def test_the_stream_route_refuses_what_fastapi_refused_in_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    # Served ahead of FastAPI's router: the same statuses, still in the one error shape.
    run_id = await start(client, "echo", text="a")
    await read_stream(client, run_id)
    path = f"/runs/{run_id}/stream"
    for method in ("POST", "PUT", "HEAD"):
        refused = await client.request(method, path)
        assert refused.status_code == 405 and refused.headers["allow"] == "GET", method
    assert_error(await client.post(path), 405, "method_not_allowed")
    assert_error(await client.get("/runs/not-a-uuid/stream"), 404, "not_found")
    too_long = {"after": "now\n"}, {"after": "5\n"}, {"after": "1" * 20}, {"tail": "9" * 5000}
    for params in (*too_long, {"tail": "0"}, {"tail": "x"}, {"tail": "10001"}, {"tail": ""}):
        assert_error(await client.get(path, params=params), 422, "invalid_request")
    assert_error(await client.get(path, params={"ticket": "t" * 1001}), 422, "invalid_request")
    stale = await client.get(path, headers={"Last-Event-ID": "1" * 41})
    assert_error(stale, 422, "invalid_request")
    # A trailing slash is the same stream (FastAPI redirected it); the last of a repeated
    # query parameter counts, as FastAPI read it.
    assert (await client.get(f"{path}/", params={"after": "now"})).status_code == 204
    repeated = await client.get(f"{path}?after=1&after=now")
    assert repeated.status_code == 204
