"""The /runs contract of DESIGN.md section 4: status codes, headers and the error shape."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from runstream.streams import keys
from runstream.worker.executor import Executor
from tests.api.checks import assert_error
from tests.api.streaming import read_stream, start
from tests.redis_server import RedisServer
from tests.system import Api, make_settings, running_api, running_worker


async def test_create_run_returns_201_run_object_and_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/runs",
        json={"agent": "echo", "input": {"text": "hi"}, "thread_id": "t1", "metadata": {"k": 1}},
    )
    assert response.status_code == 201
    run = response.json()
    assert set(run) == {
        "id",
        "agent",
        "status",
        "input",
        "thread_id",
        "metadata",
        "created_at",
        "started_at",
        "completed_at",
        "error",
        "last_seq",
    }
    assert uuid.UUID(run["id"]) and run["agent"] == "echo" and run["status"] == "queued"
    assert run["thread_id"] == "t1" and run["metadata"] == {"k": 1}
    assert run["input"] == {"text": "hi", "interval_ms": 0}  # as the agent's model reads it
    assert run["created_at"].endswith("Z") and run["last_seq"] == 0
    assert response.headers["location"] == f"/runs/{run['id']}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"agent": "nope", "input": {}}, "unknown_agent"),
        ({"agent": "scripted", "input": {"count": "many"}}, "invalid_input"),
        ({"agent": "echo"}, "invalid_request"),
        ({"agent": "echo", "input": [1]}, "invalid_request"),
        ({"agent": "echo", "input": {"text": "x"}, "surprise": 1}, "invalid_request"),
    ],
)
async def test_bad_run_request_is_422_with_the_error_shape(
    client: httpx.AsyncClient, body: dict[str, object], code: str
) -> None:
    assert_error(await client.post("/runs", json=body), 422, code)
    assert (await client.get("/runs")).json()["runs"] == []


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422)
    assert response.json()["error"]["message"].startswith("body: not valid JSON (")


async def test_a_body_without_a_json_content_type_says_so(client: httpx.AsyncClient) -> None:
    body = b'{"agent": "echo", "input": {"text": "x"}}'
    response = await client.post("/runs", content=body, headers={"content-type": "text/plain"})
    assert_error(response, 422, "invalid_request")
    assert "Content-Type: application/json" in response.json()["error"]["message"]


async def test_a_body_nested_too_deeply_for_the_parser_is_422(client: httpx.AsyncClient) -> None:
    body = b'{"agent": "echo", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post(
        "/runs", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")


async def test_body_over_the_limit_is_413_declared_or_streamed(client: httpx.AsyncClient) -> None:
    big = b'{"agent":"echo","input":{"text":"' + b"x" * (2 * 1024 * 1024) + b'"}}'
    assert_error(
        await client.post("/runs", content=big, headers={"content-type": "application/json"}),
        413,
        "too_large",
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    response = await client.post(
        "/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "too_large")


async def test_idempotency_key_returns_the_same_run_with_200(client: httpx.AsyncClient) -> None:
    body = {"agent": "echo", "input": {"text": "once"}}
    first = await client.post("/runs", json=body, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/runs", json=body, headers={"Idempotency-Key": "k-1"})
    other = await client.post("/runs", json=body, headers={"Idempotency-Key": "k-2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]


async def test_unknown_and_malformed_run_ids_are_404(client: httpx.AsyncClient) -> None:
    for path in (f"/runs/{uuid.uuid4()}", "/runs/not-a-uuid", "/runs/123/stream"):
        assert_error(await client.get(path), 404, "not_found")
    assert_error(await client.post("/runs/../stop"), 404)
    assert_error(await client.post(f"/runs/{uuid.uuid4()}/stop"), 404, "not_found")


async def test_malformed_run_id_is_404_even_with_every_backend_down(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    redis_server.stop()
    assert_error(await client.get("/runs/zzz"), 404, "not_found")
    assert_error(await client.post("/runs/zzz/stop"), 404, "not_found")
    assert_error(await client.get("/runs/zzz/stream"), 404, "not_found")


async def test_wrong_method_is_405_with_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_error(await client.delete("/runs"), 405, "method_not_allowed")


@pytest.mark.usefixtures("worker")
async def test_list_runs_pages_newest_first_and_filters(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        response = await client.post(
            "/runs",
            json={
                "agent": "echo",
                "input": {"text": "x"},
                "thread_id": "even" if i % 2 == 0 else "odd",
            },
        )
        ids.append(response.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/runs", params=params)).json()
        seen += [run["id"] for run in page["runs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    even = (await client.get("/runs", params={"thread_id": "even"})).json()["runs"]
    assert [run["id"] for run in even] == [ids[4], ids[2], ids[0]]
    for run_id in ids:
        await read_stream(client, run_id)
    done = (await client.get("/runs", params={"status": "completed", "limit": 100})).json()
    assert len(done["runs"]) == 5 and done["next"] is None


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"cursor": "garbage"}, {"status": "sleeping"}]
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, object]
) -> None:
    assert_error(await client.get("/runs", params=params), 422)


async def test_stop_while_queued_ends_stopped_without_starting_the_agent(
    client: httpx.AsyncClient, redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await start(client, "scripted", count=3)
    stopped = await client.post(f"/runs/{run_id}/stop")
    assert stopped.status_code == 202 and stopped.json()["status"] == "stopped"
    events = await read_stream(client, run_id)
    assert [(e["id"], e["data"]["status"]) for e in events] == [("1", "stopped")]
    # A worker that receives it afterwards acknowledges and skips it.
    delivered = asyncio.Event()
    execute = Executor.execute

    async def recording(self: Executor, delivered_id: str) -> None:
        await execute(self, delivered_id)
        if delivered_id == run_id:
            delivered.set()

    monkeypatch.setattr(Executor, "execute", recording)
    async with running_worker(make_settings(redis_url, sqlite_url, instance="late")):
        await asyncio.wait_for(delivered.wait(), 15)  # it fetched the run, and skipped it
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == "stopped" and run["started_at"] is None and run["last_seq"] == 1
    assert_error(await client.post(f"/runs/{run_id}/stop"), 409, "run_finished")


@pytest.mark.usefixtures("worker")
async def test_every_key_a_run_leaves_has_a_ttl(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    finished = await start(client, "echo", text="a few words")
    await read_stream(client, finished)
    stopped = await start(client, "scripted", count=1, hang=True)
    await client.post(f"/runs/{stopped}/stop")
    await read_stream(client, stopped)
    with redis_server.admin() as admin:
        # The queue's own keys are streaq's, under one prefix; every other key is ours.
        queue = keys.queue_prefix("")
        names = [k.decode() for k in admin.scan_iter("runstream:*")]
        ours = [k for k in names if not k.startswith(queue)]
        ttls = {k: admin.ttl(k) for k in ours}
    kinds = {k.rsplit(":", 1)[-1] for k in ours}
    assert {"events", "stop"} <= kinds, ours  # the log of each run and the stop flag
    assert all(ttl > 0 for ttl in ttls.values()), ttls


@pytest.mark.usefixtures("worker")
async def test_stop_of_a_finished_run_is_409(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "echo", text="done")
    await read_stream(client, run_id)
    assert_error(await client.post(f"/runs/{run_id}/stop"), 409, "run_finished")


async def test_backend_down_is_503_and_leaves_no_queued_run(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    redis_server.stop()
    response = await client.post("/runs", json={"agent": "echo", "input": {"text": "x"}})
    assert_error(response, 503)
    assert (await client.get("/runs")).json()["runs"] == []


async def test_healthz_reports_each_backend(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    healthy = await client.get("/healthz")
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    redis_server.stop()
    # Each check notices on its own schedule (the pub/sub reader at its next read): wait
    # until both Redis checks say so.
    async with asyncio.timeout(15):
        while True:
            response = await client.get("/healthz")
            checks = response.json()["checks"]
            if checks["redis"] != "ok" and checks["pubsub"] != "ok":
                break
            await asyncio.sleep(0.05)
    assert response.status_code == 503 and response.json()["status"] == "unavailable"
    assert checks["database"] == "ok"


ALICE_KEY = "alice-key-0123456789"
BOB_KEY = "bob-key-0123456789=="  # an API key may contain "=" (base64 padding)


@pytest.fixture
async def secured(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    settings = make_settings(
        redis_url,
        sqlite_url,
        api_keys=f"{ALICE_KEY}=alice,{BOB_KEY}=bob",
        jwt_secret="s3cret-for-tests-only-32-bytes!!",
    )
    async with (
        running_api(settings) as api,
        running_worker(make_settings(redis_url, sqlite_url, instance="wk-auth")),
    ):
        yield api


async def test_credentials_are_required_when_auth_is_on(secured: Api) -> None:
    async with secured.client() as anonymous:
        assert_error(await anonymous.get("/runs"), 401, "unauthorized")
    async with secured.client("wrong") as wrong:
        assert_error(await wrong.get("/runs"), 401, "unauthorized")


async def test_another_principal_sees_404_for_my_run(secured: Api) -> None:
    async with secured.client(ALICE_KEY) as alice, secured.client(BOB_KEY) as bob:
        run_id = await start(alice, "echo", text="mine")
        assert (await alice.get(f"/runs/{run_id}")).status_code == 200
        assert_error(await bob.get(f"/runs/{run_id}"), 404, "not_found")
        assert_error(await bob.post(f"/runs/{run_id}/stop"), 404, "not_found")
        assert_error(await bob.get(f"/runs/{run_id}/stream"), 404, "not_found")
        assert (await bob.get("/runs")).json()["runs"] == []


async def test_jwt_subject_is_the_principal_and_stream_takes_token_query(secured: Api) -> None:
    claims = {"sub": "alice", "exp": int(time.time()) + 600}
    token = jwt.encode(claims, "s3cret-for-tests-only-32-bytes!!", algorithm="HS256")
    async with secured.client(token) as by_jwt, secured.client(ALICE_KEY) as by_key:
        run_id = await start(by_jwt, "echo", text="a b")
        assert (await by_key.get(f"/runs/{run_id}")).status_code == 200  # same principal
    async with secured.client() as browser:
        async with browser.stream(
            "GET", f"/runs/{run_id}/stream", params={"token": ALICE_KEY}
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert b"event: status" in body
        assert_error(await browser.get(f"/runs/{run_id}", params={"token": ALICE_KEY}), 401)
