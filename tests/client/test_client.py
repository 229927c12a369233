"""runstream.client.Client against a real API and worker: typed runs, errors by status,
every page of a list, and a follow that resumes by itself through a proxy that keeps
cutting its connections."""

from __future__ import annotations

import asyncio

import pytest

from runstream.client import Client, Conflict, InvalidRequest, NotFound, StreamEvent
from runstream.client import client as client_module
from tests.client.proxy import cutting_proxy
from tests.system import Api

pytestmark = pytest.mark.usefixtures("worker")


async def collect(events: object) -> list[StreamEvent]:
    return [event async for event in events]  # type: ignore[attr-defined]


async def test_create_get_stop_and_errors_by_status(api: Api) -> None:
    async with Client(api.url) as client:
        run = await client.create(
            "scripted",
            {"count": 1, "hang": True},
            thread_id="t1",
            metadata={"k": 1},
            idempotency_key="once",
        )
        assert (run.agent, run.thread_id, run.metadata, run.status) == (
            "scripted",
            "t1",
            {"k": 1},
            "queued",
        )
        again = await client.create(
            "scripted",
            {"count": 1, "hang": True},
            thread_id="t1",
            metadata={"k": 1},
            idempotency_key="once",
        )
        assert again.id == run.id
        assert (await client.get(run.id)).id == run.id
        stopped = await client.stop(run.id)
        assert stopped.id == run.id
        events = await collect(client.follow(run.id))
        assert events[-1].is_terminal and events[-1].data["status"] == "stopped"
        assert (await client.get(run.id)).is_final
        with pytest.raises(Conflict):
            await client.stop(run.id)
        with pytest.raises(NotFound):
            await client.get("00000000-0000-4000-8000-000000000000")
        with pytest.raises(InvalidRequest) as caught:
            await client.create("no-such-agent", {})
        assert caught.value.code == "unknown_agent"


async def test_list_iterates_every_page(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 2)
    async with Client(api.url) as client:
        made = [
            (await client.create("echo", {"text": f"r{n}"}, thread_id="paged")).id for n in range(5)
        ]
        listed = [run.id async for run in client.list(thread_id="paged")]
        assert listed == made[::-1]  # newest first, all five over three pages


async def test_follow_yields_every_event_once_and_ends_after_the_terminal_one(api: Api) -> None:
    async with Client(api.url) as client:
        run = await client.create("scripted", {"count": 30, "interval_ms": 5})
        events = await collect(client.follow(run.id))
        assert [e.seq for e in events] == list(range(1, 33))
        assert events[0].type == "status" and events[-1].data["status"] == "completed"
        assert [e.seq for e in await collect(client.follow(run.id, after=20))] == list(
            range(21, 33)
        )
        assert await collect(client.follow(run.id, after=32)) == []  # 204: already over


async def test_follow_waits_the_retry_after_a_503_asks_for(api: Api) -> None:
    async with Client(api.url) as direct:
        run = await direct.create("scripted", {"count": 3, "interval_ms": 10})
    delays: list[float] = []
    async with cutting_proxy(
        api.url, cut_after_bytes=10**9, refuse_first=1, retry_after=2
    ) as proxy:
        async with Client(proxy.url) as client:
            hook = lambda reason, attempt, delay: delays.append(delay)  # noqa: E731
            events = await asyncio.wait_for(collect(client.follow(run.id, on_retry=hook)), 30)
    assert events[-1].data["status"] == "completed"
    assert delays == [2.0]  # the backoff alone would have waited 0.1 s


async def test_follow_resumes_through_a_proxy_that_cuts_every_few_events(api: Api) -> None:
    async with Client(api.url) as direct:
        run = await direct.create("scripted", {"count": 60, "interval_ms": 10})
    # The proxy answers its first two connections 503 itself, then cuts each after ~5 events.
    async with cutting_proxy(api.url, cut_after_bytes=700, refuse_first=2) as proxy:
        async with Client(proxy.url, reconnects=10) as client:
            events = await asyncio.wait_for(collect(client.follow(run.id)), 60)
    assert [e.seq for e in events] == list(range(1, 63))
    assert events[-1].data["status"] == "completed"
    assert proxy.cuts >= 5  # it really was cut, again and again
