"""What peers of the SSE protocol expect: headers, the retry field, after=now, tail, the
JSON pages with long-polling, and agents one can discover."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from runstream.api.app import close_streams
from tests.api.checks import assert_error
from tests.api.streaming import read_stream, start
from tests.conftest import wait_until
from tests.system import Api, make_settings, running_api

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    return {
        "agents": "shout=tests.worker.sample_agents:shout,"
        "documented=tests.worker.sample_agents:documented"
    }


async def test_stream_headers_and_the_retry_field(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "echo", text="a")
    async with client.stream("GET", f"/runs/{run_id}/stream") as response:
        body = await response.aread()
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert body.startswith(b"retry: 1000\n\n")


async def test_tail_and_after_now(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=10)
    full = await read_stream(client, run_id)
    async with client.stream("GET", f"/runs/{run_id}/stream", params={"tail": 3}) as response:
        body = await response.aread()
    assert [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")] == [10, 11, 12]
    assert len(full) == 12
    done = await client.get(f"/runs/{run_id}/stream", params={"after": "now"})
    assert done.status_code == 204  # a finished run has nothing that comes next
    live = await start(client, "scripted", count=30, interval_ms=30)
    seen = (await client.get(f"/runs/{live}")).json()["last_seq"]
    async with client.stream("GET", f"/runs/{live}/stream", params={"after": "now"}) as response:
        body = await response.aread()
    ids = [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]
    assert ids and ids[0] > seen and ids == list(range(ids[0], 33))
    assert_error(await client.get(f"/runs/{live}/stream", params={"after": "later"}), 422)
    assert_error(await client.get(f"/runs/{live}/stream", params={"tail": 0}), 422)


async def test_events_pages_and_long_polls(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=1, hang=True)
    page = (await client.get(f"/runs/{run_id}/events", params={"wait": 5})).json()
    assert page["events"][0]["type"] == "status" and not page["closed"]
    after = page["next_after"]
    while True:  # the tick may come in the same page or the next one
        page = (await client.get(f"/runs/{run_id}/events", params={"after": after})).json()
        after = page["next_after"]
        if any(e["type"] == "tick" for e in page["events"]) or not page["events"]:
            break
    # Nothing new: a long poll waits, and is answered by the stop's terminal event.
    waiting = asyncio.create_task(
        client.get(f"/runs/{run_id}/events", params={"after": after, "wait": 20})
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await client.post(f"/runs/{run_id}/stop")
    page = (await waiting).json()
    assert page["events"][-1]["status"] == "stopped" and page["closed"]
    last = (await client.get(f"/runs/{run_id}/events", params={"after": page["next_after"]})).json()
    assert last == {"events": [], "next_after": page["next_after"], "closed": True}
    limited = (await client.get(f"/runs/{run_id}/events", params={"limit": 1})).json()
    assert [e["seq"] for e in limited["events"]] == [1] and limited["next_after"] == 1
    quiet = await start(client, "scripted", count=0, hang=True)
    await read_stream_first(client, quiet)
    empty = (await client.get(f"/runs/{quiet}/events", params={"after": "now", "wait": 0.2})).json()
    assert empty["events"] == [] and not empty["closed"]
    await client.post(f"/runs/{quiet}/stop")


async def read_stream_first(client: httpx.AsyncClient, run_id: str) -> None:
    page = (await client.get(f"/runs/{run_id}/events", params={"wait": 5})).json()
    assert page["events"]


async def test_agents_are_listed_with_their_input_schema(client: httpx.AsyncClient) -> None:
    listed = {a["name"]: a for a in (await client.get("/agents")).json()["agents"]}
    assert list(listed) == ["documented", "echo", "scripted", "shout"]
    assert listed["shout"]["description"] == "Yields the text in capitals, word by word."
    assert listed["shout"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert listed["documented"]["description"] == "Says hello."
    assert listed["documented"]["input_schema"] == {"type": "object"}
    assert "count" in listed["scripted"]["input_schema"]["properties"]
    assert "`" not in listed["scripted"]["description"]  # plain text, not the docstring's reST
    bad = await client.post("/runs", json={"agent": "shout", "input": {"txt": 5}})
    assert_error(bad, 422, "invalid_input")
    unknown = await client.post("/runs", json={"agent": "nope", "input": {}})
    assert_error(unknown, 422, "unknown_agent")
    assert "documented, echo, scripted, shout" in unknown.json()["error"]["message"]
    run_id = await start(client, "shout", text="hello there")
    texts = [e["data"].get("text") for e in await read_stream(client, run_id)]
    assert texts[1:3] == ["HELLO", "THERE"]


async def test_last_seq_is_live_in_lists_and_in_the_stop_answer(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "scripted", count=3, hang=True)
    page = (await client.get(f"/runs/{run_id}/events", params={"wait": 5})).json()
    while not any(e["type"] == "tick" and e["n"] == 3 for e in page["events"]):
        page = (
            await client.get(
                f"/runs/{run_id}/events", params={"after": page["next_after"], "wait": 5}
            )
        ).json()
    listed = (await client.get("/runs", params={"status": "running"})).json()["runs"]
    assert [r["last_seq"] for r in listed if r["id"] == run_id] == [4]
    assert "input" not in listed[0]  # lists leave inputs out; the run itself shows it
    assert (await client.get(f"/runs/{run_id}")).json()["input"]["count"] == 3
    stopped = (await client.post(f"/runs/{run_id}/stop")).json()
    assert stopped["last_seq"] >= 4


async def test_stream_max_s_ends_long_streams_with_their_cursor(
    redis_url: str, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="api-rotate", stream_max_s=0.5)
    run_id = await start(client, "scripted", count=1, hang=True)
    async with running_api(settings) as rotating, rotating.client() as short:
        async with short.stream("GET", f"/runs/{run_id}/stream") as response:
            body = await response.aread()  # ends by itself, the run still going
        ids = [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]
        assert ids == [1, 2] and b'"status":"running"' in body
        await client.post(f"/runs/{run_id}/stop")
        resumed = await read_stream(short, run_id, last_event_id=ids[-1])
        assert [e["data"]["status"] for e in resumed] == ["stopped"]


async def test_a_shutdown_ends_a_long_poll_at_once_with_an_empty_page(
    api: Api, client: httpx.AsyncClient
) -> None:
    run_id = await start(client, "scripted", count=0, hang=True)
    first = (await client.get(f"/runs/{run_id}/events", params={"wait": 5})).json()
    waiting = asyncio.create_task(
        client.get(f"/runs/{run_id}/events", params={"after": first["next_after"], "wait": 30})
    )
    app: Any = api.server.config.app
    streams = app.state.open_streams
    await wait_until(lambda: bool(streams._deadlines), timeout=10)  # the poll is waiting
    close_streams(app)
    async with asyncio.timeout(5):  # not the 30 s the poll asked for
        page = (await waiting).json()
    assert page == {"events": [], "next_after": first["next_after"], "closed": False}
    await client.post(f"/runs/{run_id}/stop")
